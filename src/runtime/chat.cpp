#include "runtime/chat.h"
