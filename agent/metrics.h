/* agent/metrics.h - the agent's state as Prometheus text (the /metrics endpoint). */
#pragma once

#include "agent/agent.h"

/* The exposition text.  Caller frees. */
char *vn_agent_metrics(VnAgent *a);
