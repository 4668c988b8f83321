"""Models: the ViT (seed names) and the CNN baseline."""

from vit_lab.models.cnn import SimpleCNN
from vit_lab.models.vit import MyMSA, MyViT, MyViTBlock, check_vit_shape, get_positional_embeddings, patchify

__all__ = ["MyViT", "MyViTBlock", "MyMSA", "patchify", "get_positional_embeddings", "check_vit_shape", "SimpleCNN"]
