"""sweep: is the label information in a vision transformer's CLS token actually used?"""

__version__ = "0.1.0"
