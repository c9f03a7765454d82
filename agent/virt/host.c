/* agent/virt/host.c - host facts from libvirt (see host.h). */
#include <string.h>

#include <json-c/json.h>
#include <libvirt/virterror.h>

#include "agent/virt/host.h"
#include "agent/virt/virt.h"
#include "agent/virt/xmlutil.h"

void vn_host_facts_free(VnHostFacts *f)
{
    if (!f)
        return;
    g_free(f->hostname);
    g_free(f->hypervisor_type);
    g_free(f->arch);
    g_free(f->cpu_model);
    g_free(f->cpu_vendor);
    g_strfreev(f->cpu_features);
    g_strfreev(f->security_models);
    g_free(f->capabilities_xml);
    g_free(f);
}

gboolean vn_host_parse_capabilities(const char *xml, VnHostFacts *f, GError **error)
{
    g_autoptr(xmlDoc) doc = NULL;
    g_autoptr(xmlXPathContext) ctx = NULL;

    doc = vn_xml_read(xml, xml ? strlen(xml) : 0, "capabilities", error);
    if (!doc)
        return FALSE;
    ctx = xmlXPathNewContext(doc);
    g_free(f->arch);
    f->arch = vn_xpath_string(ctx, "/capabilities/host/cpu/arch");
    g_free(f->cpu_model);
    f->cpu_model = vn_xpath_string(ctx, "/capabilities/host/cpu/model");
    g_free(f->cpu_vendor);
    f->cpu_vendor = vn_xpath_string(ctx, "/capabilities/host/cpu/vendor");
    g_strfreev(f->cpu_features);
    f->cpu_features = vn_xpath_strings(ctx, "/capabilities/host/cpu/feature/@name");
    g_strfreev(f->security_models);
    f->security_models = vn_xpath_strings(ctx, "/capabilities/host/secmodel/model");
    g_autofree char *sockets = vn_xpath_string(ctx, "/capabilities/host/cpu/topology/@sockets");
    g_autofree char *cores = vn_xpath_string(ctx, "/capabilities/host/cpu/topology/@cores");
    g_autofree char *threads = vn_xpath_string(ctx, "/capabilities/host/cpu/topology/@threads");
    if (sockets)
        f->sockets = (int)g_ascii_strtoll(sockets, NULL, 10);
    if (cores)
        f->cores = (int)g_ascii_strtoll(cores, NULL, 10);
    if (threads)
        f->threads = (int)g_ascii_strtoll(threads, NULL, 10);
    return TRUE;
}

char **vn_host_security_models(VnVirtConn *c, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    g_autoptr(VnHostFacts) f = g_new0(VnHostFacts, 1);
    char *caps;

    if (!conn)
        return NULL;
    /* read once per connection: each build's label check names its models */
    char **kept = vn_virt_conn_security_models(c, conn);
    if (kept)
        return kept;
    caps = virConnectGetCapabilities(conn);
    if (!caps) {
        vn_virt_error(error, "reading the host capabilities");
        return NULL;
    }
    gboolean ok = vn_host_parse_capabilities(caps, f, error);
    free(caps);
    if (!ok)
        return NULL;
    vn_virt_conn_keep_security_models(c, conn, f->security_models);
    return g_steal_pointer(&f->security_models);
}

VnHostFacts *vn_host_facts_read(VnVirtConn *c, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    g_autoptr(VnHostFacts) f = NULL;
    virNodeInfo ni;
    unsigned long ver = 0, lver = 0;
    char *s;

    if (!conn)
        return NULL;
    f = g_new0(VnHostFacts, 1);
    if (virNodeGetInfo(conn, &ni) < 0)
        return vn_virt_error(error, "reading the node info"), NULL;
    f->cpus = (int)ni.cpus;
    f->mhz = (int)ni.mhz;
    f->memory_mb = (gint64)(ni.memory / 1024);
    f->sockets = (int)ni.sockets;
    f->cores = (int)ni.cores;
    f->threads = (int)ni.threads;
    unsigned long long free_bytes = virNodeGetFreeMemory(conn);
    if (free_bytes == 0)
        virResetLastError();
    f->free_memory_mb = (gint64)(free_bytes / (1024 * 1024));
    s = virConnectGetHostname(conn);
    f->hostname = g_strdup(s ? s : "");
    free(s);
    const char *type = virConnectGetType(conn);
    f->hypervisor_type = g_strdup(type ? type : "unknown");
    if (virConnectGetVersion(conn, &ver) == 0)
        f->hypervisor_version = (gint64)ver;
    if (virConnectGetLibVersion(conn, &lver) == 0)
        f->libvirt_version = (gint64)lver;
    virResetLastError();
    s = virConnectGetCapabilities(conn);
    if (!s)
        return vn_virt_error(error, "reading the host capabilities"), NULL;
    f->capabilities_xml = g_strdup(s);
    free(s);
    if (!vn_host_parse_capabilities(f->capabilities_xml, f, error))
        return NULL;
    if (!f->arch)
        f->arch = g_strdup(ni.model);
    return g_steal_pointer(&f);
}

char *vn_host_facts_cpu_info_json(const VnHostFacts *f)
{
    json_object *o = json_object_new_object();
    json_object *topo = json_object_new_object();
    json_object *feats = json_object_new_array();
    char *out;

    json_object_object_add(o, "arch", json_object_new_string(f->arch ? f->arch : ""));
    json_object_object_add(o, "model", json_object_new_string(f->cpu_model ? f->cpu_model : ""));
    json_object_object_add(o, "vendor", json_object_new_string(f->cpu_vendor ? f->cpu_vendor : ""));
    json_object_object_add(topo, "sockets", json_object_new_int(f->sockets));
    json_object_object_add(topo, "cores", json_object_new_int(f->cores));
    json_object_object_add(topo, "threads", json_object_new_int(f->threads));
    json_object_object_add(o, "topology", topo);
    for (char **p = f->cpu_features; p && *p; p++)
        json_object_array_add(feats, json_object_new_string(*p));
    json_object_object_add(o, "features", feats);
    out = g_strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    return out;
}
