import SegEngine
