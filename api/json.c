/* api/json.c - checked reads of JSON arguments (see json.h). */
#include <string.h>

#include "api/error.h"
#include "api/json.h"

static char *join(const char *path, const char *key)
{
    return path && *path ? g_strdup_printf("%s.%s", path, key) : g_strdup(key);
}

static gboolean invalid(GError **error, const char *path, const char *key, const char *what)
{
    g_autofree char *p = join(path, key);

    g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "%s: %s", p, what);
    return FALSE;
}

json_object *vn_json_member(json_object *obj, const char *key)
{
    json_object *v = NULL;

    if (!obj || !json_object_is_type(obj, json_type_object))
        return NULL;
    if (!json_object_object_get_ex(obj, key, &v))
        return NULL;
    return json_object_is_type(v, json_type_null) ? NULL : v;
}

gboolean vn_json_expect_object(json_object *obj, const char *path, const char *const *allowed,
                               GError **error)
{
    if (!obj || !json_object_is_type(obj, json_type_object)) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "%s: expected an object",
                    path && *path ? path : "args");
        return FALSE;
    }
    json_object_object_foreach(obj, k, v)
    {
        (void)v;
        if (allowed && !g_strv_contains(allowed, k)) {
            g_autofree char *shown = g_utf8_make_valid(k, MIN(strlen(k), 64));
            return invalid(error, path, shown, "unexpected argument");
        }
    }
    return TRUE;
}

static gboolean printable(const char *s)
{
    if (!g_utf8_validate(s, -1, NULL))
        return FALSE;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            return FALSE;
    }
    return TRUE;
}

gboolean vn_json_get_string(json_object *obj, const char *path, const char *key, gboolean required,
                            gsize min_len, gsize max_len, char **out, GError **error)
{
    json_object *v = vn_json_member(obj, key);

    *out = NULL;
    if (!v) {
        if (required)
            return invalid(error, path, key, "missing");
        return TRUE;
    }
    if (!json_object_is_type(v, json_type_string))
        return invalid(error, path, key, "expected a string");
    const char *s = json_object_get_string(v);
    gsize len = (gsize)json_object_get_string_len(v);
    if (strlen(s) != len || !printable(s))
        return invalid(error, path, key, "contains control characters or invalid UTF-8");
    if (len < min_len || len > max_len) {
        g_autofree char *what =
            g_strdup_printf("length %zu is outside [%zu, %zu]", len, min_len, max_len);
        return invalid(error, path, key, what);
    }
    *out = g_strdup(s);
    return TRUE;
}

gboolean vn_json_get_int(json_object *obj, const char *path, const char *key, gboolean required,
                         gint64 min, gint64 max, gint64 def, gint64 *out, GError **error)
{
    json_object *v = vn_json_member(obj, key);

    if (!v) {
        if (required)
            return invalid(error, path, key, "missing");
        *out = def;
        return TRUE;
    }
    if (!json_object_is_type(v, json_type_int))
        return invalid(error, path, key, "expected an integer");
    errno = 0;
    gint64 n = json_object_get_int64(v);
    /* json-c saturates values beyond int64; treat them as out of range */
    if (n < min || n > max || n == G_MAXINT64 || n == G_MININT64) {
        g_autofree char *what =
            g_strdup_printf("must be between %" G_GINT64_FORMAT " and %" G_GINT64_FORMAT, min, max);
        return invalid(error, path, key, what);
    }
    *out = n;
    return TRUE;
}

gboolean vn_json_get_bool(json_object *obj, const char *path, const char *key, gboolean def,
                          gboolean *out, GError **error)
{
    json_object *v = vn_json_member(obj, key);

    if (!v) {
        *out = def;
        return TRUE;
    }
    if (!json_object_is_type(v, json_type_boolean))
        return invalid(error, path, key, "expected true or false");
    *out = json_object_get_boolean(v);
    return TRUE;
}

gboolean vn_json_get_string_map(json_object *obj, const char *path, const char *key,
                                guint max_entries, GHashTable **out, GError **error)
{
    json_object *v = vn_json_member(obj, key);
    g_autoptr(GHashTable) map = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    g_autofree char *p = join(path, key);

    *out = NULL;
    if (v) {
        if (!json_object_is_type(v, json_type_object))
            return invalid(error, path, key, "expected an object");
        if ((guint)json_object_object_length(v) > max_entries) {
            g_autofree char *what = g_strdup_printf("more than %u entries", max_entries);
            return invalid(error, path, key, what);
        }
        json_object_object_foreach(v, k, val)
        {
            g_autofree char *s = NULL;
            if (strlen(k) == 0 || strlen(k) > 255 || !printable(k))
                return invalid(error, p, "<key>", "keys must be 1-255 printable characters");
            if (!vn_json_get_string(v, p, k, TRUE, 0, 255, &s, error))
                return FALSE;
            (void)val;
            g_hash_table_insert(map, g_strdup(k), g_steal_pointer(&s));
        }
    }
    *out = g_steal_pointer(&map);
    return TRUE;
}

char *vn_uuid_canonical(const char *text)
{
    if (!text || strlen(text) != 36)
        return NULL;
    for (int i = 0; i < 36; i++) {
        gboolean dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? text[i] != '-' : !g_ascii_isxdigit(text[i]))
            return NULL;
    }
    return g_ascii_strdown(text, -1);
}

char *vn_json_to_string(json_object *obj)
{
    return g_strdup(json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN |
                                                            JSON_C_TO_STRING_NOSLASHESCAPE));
}
