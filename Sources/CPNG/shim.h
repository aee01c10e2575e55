// libpng for Swift. segtrain uses only the SIMPLIFIED API (png_image_*): it reports errors through
// return codes and png_image.message. The classic API longjmps on errors, which Swift cannot catch.
#include <png.h>
