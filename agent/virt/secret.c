/* agent/virt/secret.c - volume secrets in libvirt (see secret.h). */
#include <stdlib.h>
#include <string.h>

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "agent/virt/secret.h"
#include "agent/virt/virt.h"
#include "agent/virt/xmlutil.h"

G_DEFINE_AUTOPTR_CLEANUP_FUNC(virSecret, virSecretFree)

char *vn_secret_usage(const char *volume_id)
{
    return g_strconcat(VN_SECRET_USAGE_PREFIX, volume_id, NULL);
}

static virSecretPtr lookup(virConnectPtr conn, const char *volume_id)
{
    g_autofree char *usage = vn_secret_usage(volume_id);
    virSecretPtr s = virSecretLookupByUsage(conn, VIR_SECRET_USAGE_TYPE_ISCSI, usage);

    if (!s)
        virResetLastError();
    return s;
}

gboolean vn_secret_define(VnVirtConn *c, const char *volume_id, const char *value, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    g_autoptr(xmlDoc) doc = xmlNewDoc(BAD_CAST "1.0");
    g_autofree char *usage = vn_secret_usage(volume_id);
    g_autofree char *xml = NULL;
    g_autoptr(virSecret) s = NULL;
    xmlNodePtr root, u;

    if (!conn)
        return FALSE;
    s = lookup(conn, volume_id);
    if (!s) {
        root = xmlNewNode(NULL, BAD_CAST "secret");
        xmlDocSetRootElement(doc, root);
        xmlNewProp(root, BAD_CAST "ephemeral", BAD_CAST "no");
        xmlNewProp(root, BAD_CAST "private", BAD_CAST "no");
        xmlNewChild(root, NULL, BAD_CAST "description", BAD_CAST "virtnode volume CHAP secret");
        u = xmlNewChild(root, NULL, BAD_CAST "usage", NULL);
        xmlNewProp(u, BAD_CAST "type", BAD_CAST "iscsi");
        xmlNewChild(u, NULL, BAD_CAST "target", BAD_CAST usage);
        xml = vn_xml_dump(doc);
        s = virSecretDefineXML(conn, xml, 0);
        if (!s)
            return vn_virt_error(error, "defining the secret of volume %s", volume_id);
    }
    if (virSecretSetValue(s, (const unsigned char *)value, strlen(value), 0) < 0)
        return vn_virt_error(error, "setting the secret of volume %s", volume_id);
    return TRUE;
}

char *vn_secret_get(VnVirtConn *c, const char *volume_id)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, NULL);
    g_autoptr(virSecret) s = conn ? lookup(conn, volume_id) : NULL;
    unsigned char *v;
    size_t n = 0;
    char *out;

    if (!s)
        return NULL;
    v = virSecretGetValue(s, &n, 0);
    if (!v) {
        virResetLastError();
        return NULL;
    }
    out = g_strndup((const char *)v, n);
    memset(v, 0, n);
    free(v);
    return out;
}

gboolean vn_secret_exists(VnVirtConn *c, const char *volume_id)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, NULL);
    g_autoptr(virSecret) s = conn ? lookup(conn, volume_id) : NULL;

    return s != NULL;
}

gboolean vn_secret_undefine(VnVirtConn *c, const char *volume_id, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    g_autoptr(virSecret) s = NULL;

    if (!conn)
        return FALSE;
    s = lookup(conn, volume_id);
    if (s && virSecretUndefine(s) < 0)
        return vn_virt_error(error, "removing the secret of volume %s", volume_id);
    return TRUE;
}

char **vn_secret_list(VnVirtConn *c, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    virSecretPtr *secrets = NULL;
    GPtrArray *out;
    int n;

    if (!conn)
        return NULL;
    n = virConnectListAllSecrets(conn, &secrets, VIR_CONNECT_LIST_SECRETS_PRIVATE);
    if (n < 0) {
        vn_virt_error(error, "listing secrets");
        return NULL;
    }
    out = g_ptr_array_new();
    for (int i = 0; i < n; i++) {
        const char *usage = virSecretGetUsageID(secrets[i]);
        if (virSecretGetUsageType(secrets[i]) == VIR_SECRET_USAGE_TYPE_ISCSI && usage &&
            g_str_has_prefix(usage, VN_SECRET_USAGE_PREFIX))
            g_ptr_array_add(out, g_strdup(usage + strlen(VN_SECRET_USAGE_PREFIX)));
        virSecretFree(secrets[i]);
    }
    free(secrets);
    g_ptr_array_add(out, NULL);
    return (char **)g_ptr_array_free(out, FALSE);
}
