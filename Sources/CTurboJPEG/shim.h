// libjpeg-turbo's TurboJPEG API (2.x: tjInitDecompress, tjDecompressHeader3, tjDecompress2,
// tjCompress2, ...) for Swift. It reports errors through return codes and tjGetErrorStr2 /
// tjGetErrorCode; the libjpeg API underneath longjmps, which Swift cannot catch.
#include <stddef.h>
#include <turbojpeg.h>
