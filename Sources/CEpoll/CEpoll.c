// Headers only (include/CEpoll.h); SwiftPM wants a source file in a C target.
#include "CEpoll.h"
