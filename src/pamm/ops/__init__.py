"""Pure tensor operations: the selective scan and the scan orders. They know nothing of models."""

from .scan_orders import SCAN_KINDS, inverse_orders, scan_orders
from .selective_scan import SCAN_BACKENDS, resolve_scan_backend, selective_scan
from .selective_scan_reference import selective_scan_reference

__all__ = [
    "selective_scan",
    "selective_scan_reference",
    "SCAN_BACKENDS",
    "resolve_scan_backend",
    "scan_orders",
    "inverse_orders",
    "SCAN_KINDS",
]
