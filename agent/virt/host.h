/* agent/virt/host.h - facts about the hypervisor host, as libvirt reports them: CPUs,
 * memory, CPU model and features, hypervisor version, security models. */
#pragma once

#include <glib.h>

#include "agent/virt/conn.h"

typedef struct {
    char *hostname;
    char *hypervisor_type;     /* "QEMU" */
    gint64 hypervisor_version; /* major * 1000000 + minor * 1000 + micro */
    gint64 libvirt_version;
    int cpus; /* logical CPUs */
    int sockets;
    int cores;
    int threads;
    int mhz;
    gint64 memory_mb; /* total */
    gint64 free_memory_mb;
    char *arch;
    char *cpu_model;
    char *cpu_vendor;
    char **cpu_features;    /* NULL-terminated */
    char **security_models; /* NULL-terminated, in libvirt's order, e.g. {"selinux","dac"} */
    char *capabilities_xml;
} VnHostFacts;

VnHostFacts *vn_host_facts_read(VnVirtConn *c, GError **error);
void vn_host_facts_free(VnHostFacts *f);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnHostFacts, vn_host_facts_free)

/* Nova's cpu_info JSON text: arch, model, vendor, topology, features.  Caller frees. */
char *vn_host_facts_cpu_info_json(const VnHostFacts *f);

/* The security models of the host (from the capabilities), in order.  Caller frees. */
char **vn_host_security_models(VnVirtConn *c, GError **error);

/* Parses the parts of a capabilities document used above (exposed for tests). */
gboolean vn_host_parse_capabilities(const char *xml, VnHostFacts *f, GError **error);
