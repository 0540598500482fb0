"""natkit-vmf: von Mises-Fisher mixture targets ('vmf') for natkit."""

# Kept empty of imports: natkit imports this package whenever it loads plugins, and the
# heavy modules should be paid for only when the component is used.
__version__ = "0.1.0"
