"""NAT in your own training loop: a torchvision ResNet-18 learns CIFAR-10 features from noise."""

import torch
import torchvision
from torch import nn

import natkit


def main(dataset, model=None, *, dim=128, epochs=3, batch_size=256, lr=0.05, seed=0):
    """Train ``model`` with NAT on ``dataset`` (items: image, index, label); each step's loss."""
    torch.manual_seed(seed)
    if model is None:  # the paper's fixed Sobel filters, then a ResNet-18 with a 32 px stem
        resnet = torchvision.models.resnet18(num_classes=dim)
        resnet.conv1, resnet.maxpool = nn.Conv2d(2, 64, 3, padding=1, bias=False), nn.Identity()
        model = nn.Sequential(natkit.create_preprocess("sobel", in_channels=3), resnet)
    objective = natkit.NATObjective(len(dataset), dim, seed=seed)  # sphere targets, exact solver
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loader = torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    losses = []
    for epoch in range(epochs):
        objective.start_epoch(epoch)  # reassignment on in epochs 0, 3, 6, ... (permute_every=3)
        for images, indices, _ in loader:
            loss = objective(model(images), indices)  # reassigns the batch's targets, then the loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        print(f"epoch {epoch}: loss {losses[-1]:.4f}, last reassignment {objective.last_stats}")
    return losses


if __name__ == "__main__":
    cifar10 = torchvision.datasets.CIFAR10("data", train=True, download=True)
    main(natkit.wrap_dataset(cifar10, image_size=32))
