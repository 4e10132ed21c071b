"""samedge: the stability of optimizers in deep learning, measured exactly.

Importing the package does nothing but define names; every computation starts from a call.
"""

__version__ = "0.1.0"
