"""Thin wrappers over torchvision / timm backbones returning named intermediate features."""
