"""GASE networks: style encoder E, mapping network M, generator G, segmentation discriminator D."""
from .generator import StyleGenerator
from .segmenter import SegDiscriminator, SegOutput
from .style import MappingNetwork, StyleEncoder

__all__ = ["StyleGenerator", "SegDiscriminator", "SegOutput", "MappingNetwork", "StyleEncoder"]
