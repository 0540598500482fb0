"""natkit-sela: SeLa's self-labelling (Asano, Rupprecht & Vedaldi, ICLR 2020) as a natkit method."""

__version__ = "0.1.0"
