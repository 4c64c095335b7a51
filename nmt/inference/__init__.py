"""Programs that use a trained model: Translator and Captioner, translate, evaluate,
caption, average and attention plots. May import export, decoding, model, data, core.
"""

from nmt.inference.captioner import Captioner
from nmt.inference.translator import Translator

__all__ = ["Captioner", "Translator"]
