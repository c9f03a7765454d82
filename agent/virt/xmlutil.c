/* agent/virt/xmlutil.c - safe XML reading and XPath helpers (see xmlutil.h). */
#include <string.h>

#include "agent/virt/virt.h"
#include "agent/virt/xmlutil.h"

#define MAX_XML_BYTES (16 * 1024 * 1024)

xmlDocPtr vn_xml_read(const char *xml, gsize len, const char *root, GError **error)
{
    xmlDocPtr doc;

    if (!xml || len == 0 || len > MAX_XML_BYTES) {
        g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_XML, "%s XML of %zu bytes refused", root,
                    xml ? len : 0);
        return NULL;
    }
    doc = xmlReadMemory(xml, (int)len, NULL, NULL,
                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
    if (!doc || !xmlDocGetRootElement(doc) ||
        xmlStrcmp(xmlDocGetRootElement(doc)->name, BAD_CAST root) != 0) {
        if (doc)
            xmlFreeDoc(doc);
        g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_XML, "not a <%s> XML document", root);
        return NULL;
    }
    return doc;
}

char *vn_xpath_string(xmlXPathContextPtr ctx, const char *expr)
{
    g_auto(GStrv) all = vn_xpath_strings(ctx, expr);

    return all && all[0] ? g_strdup(all[0]) : NULL;
}

char **vn_xpath_strings(xmlXPathContextPtr ctx, const char *expr)
{
    g_autoptr(xmlXPathObject) o = xmlXPathEvalExpression(BAD_CAST expr, ctx);
    GPtrArray *out = g_ptr_array_new();

    for (int i = 0; o && o->type == XPATH_NODESET && o->nodesetval && i < o->nodesetval->nodeNr;
         i++) {
        xmlChar *s = xmlXPathCastNodeToString(o->nodesetval->nodeTab[i]);
        if (s && *s)
            g_ptr_array_add(out, g_strdup((const char *)s));
        xmlFree(s);
    }
    g_ptr_array_add(out, NULL);
    return (char **)g_ptr_array_free(out, FALSE);
}

char *vn_xml_dump(xmlDocPtr doc)
{
    xmlChar *buf = NULL;
    int len = 0;
    char *out;

    xmlDocDumpFormatMemoryEnc(doc, &buf, &len, "UTF-8", 1);
    if (!buf)
        return NULL;
    out = g_strndup((const char *)buf, len);
    xmlFree(buf);
    return out;
}
