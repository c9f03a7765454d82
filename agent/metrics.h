/* agent/metrics.h - the agent's state as Prometheus text (the /metrics endpoint). */
#pragma once

#include "agent/agent.h"

/* The exposition text.  Caller frees. */
char *vn_agent_metrics(VnAgent *a);

/* Counts an operation of @method that took @seconds (success or failure). */
void vn_agent_observe_duration(VnAgent *a, VnMethod method, double seconds);

/* Ready to serve: started, not stopping, libvirt and the broker connected (/readyz and
 * virtnode_ready agree). */
gboolean vn_agent_serving(VnAgent *a);
