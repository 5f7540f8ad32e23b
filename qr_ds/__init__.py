"""qr_ds: QR-Distill on DeepSpeed."""
__version__ = "0.1.0"
