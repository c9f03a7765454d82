/* agent/ops/ports.h - a guest's network ports, shared by the flows (build, delete, attach
 * and detach, migration, start-up): checked before anything is made, plugged (a use of
 * the network's bridge from network/, and the port's security filter in libvirt),
 * described for the domain, and unplugged; and the config drive that tells the guest its
 * addresses. */
#pragma once

#include "agent/agent.h"
#include "agent/virt/domain_xml.h"
#include "api/instance.h"

/* Every port of @ports can be served by this host (physical network mapped, MTU within the
 * interface's); nothing is touched.  VN_API_ERROR_INVALID naming the port. */
gboolean vn_ports_check(VnAgent *a, const GPtrArray *ports, GError **error);

/* Plugs @ports (VnPortSpec*) in order; *@plugged counts those done, for vn_ports_unplug
 * on failure. */
gboolean vn_ports_plug(VnAgent *a, const GPtrArray *ports, guint *plugged, GError **error);

/* Unplugs the first @count of @ports, last first: the security filter goes, and the
 * bridge's use (the bridge with it when it was the last).  The guest's interfaces must be
 * gone already (libvirt keeps a filter a running interface uses).  Failures are logged. */
void vn_ports_unplug(VnAgent *a, const GPtrArray *ports, guint count);

/* The domain interface of @port. */
void vn_ports_iface(const VnPortSpec *port, VnIfaceSpec *out);
void vn_ports_iface_clear(VnIfaceSpec *i);

/* Writes the config drive of @rec at @path (meta_data.json, network_data.json, user_data),
 * as OpenStack's config drive version "latest". */
gboolean vn_ports_config_drive(VnAgent *a, const VnInstanceRecord *rec, const char *path,
                               GCancellable *cancel, GError **error);

/* At start-up: takes the uses of every port of every live instance of this host (adopting
 * and repairing their bridges and filters), then removes bridges and filters that no port
 * uses any more (what a crash or a half-done plug left). */
void vn_ports_reconcile(VnAgent *a);
