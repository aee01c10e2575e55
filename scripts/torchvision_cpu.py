"""Imports torchvision on a CPU-only torch whose torchvision came from PyPI's CUDA build.

PyPI's torchvision wheels link their compiled operators (nms, roi_align, ...) against CUDA
torch. Beside a CPU torch wheel that library does not load; torchvision tolerates that, but its
`_meta_registrations` module then registers fake kernels for operators that were never defined,
and `import torchvision` fails with a RuntimeError. Segmentation (torchvision's ResNet and
MobileNetV2, smp's models) never calls those operators, so on that failure this module imports
torchvision without `_meta_registrations`. Any other failure is raised unchanged, and where
torchvision imports normally this is a plain `import torchvision`.
"""
import sys
import types


def import_torchvision():
    """torchvision, imported as the module docstring says."""
    try:
        import torchvision
        return torchvision
    except RuntimeError as error:
        failure = error
    for name in [m for m in sys.modules if m.startswith("torchvision")]:
        del sys.modules[name]
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    import torchvision
    if torchvision.extension._has_ops():
        raise failure  # the operators loaded: the import failed for another reason
    return torchvision
