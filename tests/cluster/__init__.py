"""Tests against a real Kubernetes control plane, and the helpers they share.

build.sh builds the binaries; controlplane.py runs them; kubelet.py plays the
kubelet; fixtures.py wires it into pytest (registered by tests/conftest.py).
"""
