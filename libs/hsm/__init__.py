"""HSM backends: one interface, a PKCS#11 implementation and a remote hsm-node client."""

from libs.hsm.backend import HsmBackend

__all__ = ["HsmBackend"]
