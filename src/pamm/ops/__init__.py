"""Pure tensor operations: the selective scan and the scan orders. They know nothing of models."""

from .scan_orders import SCAN_KINDS, inverse_orders, scan_orders
from .selective_scan import selective_scan, selective_scan_reference

__all__ = ["selective_scan", "selective_scan_reference", "scan_orders", "inverse_orders", "SCAN_KINDS"]
