// libshmbus — umbrella header.
#pragma once

#include "shmbus/channel.hpp"
#include "shmbus/coro.hpp"
#include "shmbus/error.hpp"
#include "shmbus/inspect.hpp"
#include "shmbus/log.hpp"
#include "shmbus/message.hpp"
#include "shmbus/policy.hpp"
#include "shmbus/port.hpp"
#include "shmbus/stream.hpp"
#include "shmbus/supervisor.hpp"
#include "shmbus/validate.hpp"
#include "shmbus/window.hpp"
