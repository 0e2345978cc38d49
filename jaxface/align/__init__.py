"""Face alignment. PyTorch lives in this package and nowhere else; importing the package itself does not import torch."""
