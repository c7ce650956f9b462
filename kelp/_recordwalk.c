/*
 * kelp._recordwalk: walk the records of an uncompressed Kafka v2 records body.
 *
 * The native half of kelp/batchcheck.py. It checks the structure DefaultRecord.readFrom
 * reads (record length, attributes, timestampDelta, offsetDelta, key, value, headers) for
 * `count` records, builds no Python object per record, and reports the first problem as
 * small integers; Python turns them into Kafka-style messages. The pure-Python walker in
 * batchcheck.py returns exactly the same tuples; keep the two in step.
 *
 *     walk(body, count, compacted) -> (status, record, header, a, b, keyless)
 *
 * status 0 is success. record is the index of the record at fault (or `count`), header the
 * index of the header at fault (-1 outside headers), a and b are detail numbers whose meaning
 * depends on status (on success: the largest timestampDelta, and 1 if there was a record),
 * keyless is None or (only on success with compacted true) a list of the indexes of records
 * whose key is null.
 *
 * Safety: every length is compared with the bytes left (as 64-bit signed numbers) before the
 * cursor moves, and every byte is read only after checking the cursor against the end, so no
 * input can make it read out of bounds. The GIL is released while walking large bodies; the
 * buffer export keeps the memory alive and unresizable meanwhile.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>

/* Status codes: mirrored in batchcheck.py. */
enum {
    ST_OK = 0,
    ST_VARINT_TRUNCATED = 1,     /* a = field */
    ST_VARINT_TOO_LONG = 2,      /* a = field */
    ST_RECORD_LENGTH = 3,        /* a = declared length (<= 0) */
    ST_RECORD_PAST_END = 4,      /* a = declared length, b = bytes left in the body */
    ST_OFFSET_DELTA = 5,         /* a = offset delta found */
    ST_KEY_LENGTH = 6,           /* a = key length (< -1) */
    ST_KEY_PAST_END = 7,         /* a = key length, b = bytes left in the record */
    ST_VALUE_LENGTH = 8,
    ST_VALUE_PAST_END = 9,
    ST_HEADER_COUNT_NEGATIVE = 10,   /* a = header count */
    ST_HEADER_COUNT_TOO_LARGE = 11,  /* a = header count, b = bytes left in the record */
    ST_HEADER_KEY_NEGATIVE = 12,     /* a = header key length */
    ST_HEADER_KEY_PAST_END = 13,     /* a = length, b = bytes left */
    ST_HEADER_VALUE_LENGTH = 14,     /* a = header value length (< -1) */
    ST_HEADER_VALUE_PAST_END = 15,   /* a = length, b = bytes left */
    ST_RECORD_SIZE = 16,             /* a = declared length, b = bytes the fields took */
    ST_TRAILING = 17,                /* a = unconsumed bytes */
    ST_RECORDS_MISSING = 18,         /* record = records found, a = count */
};

/* Varint fields, for the two varint statuses. */
enum {
    F_LENGTH = 0,
    F_TIMESTAMP_DELTA = 1,
    F_OFFSET_DELTA = 2,
    F_KEY_LENGTH = 3,
    F_VALUE_LENGTH = 4,
    F_HEADER_COUNT = 5,
    F_HEADER_KEY_LENGTH = 6,
    F_HEADER_VALUE_LENGTH = 7,
};

/* Release the GIL only when the walk is long enough to be worth the switch. */
#define NOGIL_THRESHOLD (256 * 1024)

typedef struct {
    int status;
    int64_t record;
    int64_t header;
    int64_t a;
    int64_t b;
    /* keyless record indexes, compacted only */
    int64_t *keyless;
    Py_ssize_t keyless_len;
    Py_ssize_t keyless_cap;
    int nomem;
} walk_result;

/*
 * A zigzag varint as Kafka's ByteUtils.readVarint reads it: at most 5 bytes, the 5th without
 * its continuation bit, bits above 32 dropped (Java int shifts). Returns 0, or a status.
 */
static inline int
read_varint(const uint8_t **pp, const uint8_t *end, int64_t *out)
{
    const uint8_t *p = *pp;
    uint32_t raw = 0;
    uint8_t byte;
    int i;

    if (p < end && *p < 0x80) { /* the common one-byte case */
        raw = *p++;
        *pp = p;
        *out = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
        return ST_OK;
    }
    for (i = 0; i < 4; i++) {
        if (p >= end)
            return ST_VARINT_TRUNCATED;
        byte = *p++;
        raw |= (uint32_t)(byte & 0x7F) << (7 * i);
        if (!(byte & 0x80))
            goto done;
    }
    if (p >= end)
        return ST_VARINT_TRUNCATED;
    byte = *p++;
    if (byte & 0x80)
        return ST_VARINT_TOO_LONG;
    raw |= (uint32_t)byte << 28; /* high bits fall off, as in Java */
done:
    *pp = p;
    *out = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
    return ST_OK;
}

/*
 * A zigzag varlong as ByteUtils.readVarlong reads it: at most 10 bytes, bits above 64 dropped
 * (Java long shifts). Returns 0, or a status.
 */
static inline int
read_varlong(const uint8_t **pp, const uint8_t *end, int64_t *out)
{
    const uint8_t *p = *pp;
    uint64_t raw = 0;
    uint8_t byte;
    int i;

    for (i = 0; i < 10; i++) {
        if (p >= end)
            return ST_VARINT_TRUNCATED;
        byte = *p++;
        raw |= (uint64_t)(byte & 0x7F) << (7 * i);
        if (!(byte & 0x80)) {
            *pp = p;
            *out = (int64_t)(raw >> 1) ^ -(int64_t)(raw & 1);
            return ST_OK;
        }
    }
    return ST_VARINT_TOO_LONG;
}

static int
note_keyless(walk_result *r, int64_t index)
{
    if (r->keyless_len == r->keyless_cap) {
        Py_ssize_t cap = r->keyless_cap ? r->keyless_cap * 2 : 16;
        int64_t *grown;
        if ((size_t)cap > PY_SSIZE_T_MAX / sizeof(int64_t))
            return -1;
        grown = realloc(r->keyless, (size_t)cap * sizeof(int64_t));
        if (grown == NULL)
            return -1;
        r->keyless = grown;
        r->keyless_cap = cap;
    }
    r->keyless[r->keyless_len++] = index;
    return 0;
}

#define FAIL(st, aa, bb) \
    do { r->status = (st); r->record = index; r->header = header; \
         r->a = (aa); r->b = (bb); return; } while (0)

#define VARINT(ptr, lim, outp, field) \
    do { int st_ = read_varint(&(ptr), (lim), (outp)); \
         if (st_ != ST_OK) FAIL(st_, (field), 0); } while (0)

static void
walk(const uint8_t *data, Py_ssize_t size, int64_t count, int compacted, walk_result *r)
{
    const uint8_t *p = data;
    const uint8_t *end = data + size;
    int64_t index, header = -1;
    int64_t max_delta = INT64_MIN; /* the largest timestampDelta, for the batch's maxTimestamp */

    for (index = 0; index < count; index++) {
        const uint8_t *rec, *rec_end;
        int64_t length, timestamp_delta, offset_delta, key_len, value_len, n_headers, h_len, left;
        int st;

        header = -1;
        if (p >= end)
            FAIL(ST_RECORDS_MISSING, count, 0);
        VARINT(p, end, &length, F_LENGTH);
        if (length <= 0)
            FAIL(ST_RECORD_LENGTH, length, 0);
        if (length > (int64_t)(end - p))
            FAIL(ST_RECORD_PAST_END, length, (int64_t)(end - p));
        rec = p;
        rec_end = p + length;

        p++; /* attributes: length > 0, so the byte is there */
        st = read_varlong(&p, rec_end, &timestamp_delta);
        if (st != ST_OK)
            FAIL(st, F_TIMESTAMP_DELTA, 0);
        if (timestamp_delta > max_delta)
            max_delta = timestamp_delta;
        VARINT(p, rec_end, &offset_delta, F_OFFSET_DELTA);
        if (offset_delta != index)
            FAIL(ST_OFFSET_DELTA, offset_delta, 0);

        VARINT(p, rec_end, &key_len, F_KEY_LENGTH);
        if (key_len < -1)
            FAIL(ST_KEY_LENGTH, key_len, 0);
        left = (int64_t)(rec_end - p);
        if (key_len > left)
            FAIL(ST_KEY_PAST_END, key_len, left);
        if (key_len > 0)
            p += key_len;

        VARINT(p, rec_end, &value_len, F_VALUE_LENGTH);
        if (value_len < -1)
            FAIL(ST_VALUE_LENGTH, value_len, 0);
        left = (int64_t)(rec_end - p);
        if (value_len > left)
            FAIL(ST_VALUE_PAST_END, value_len, left);
        if (value_len > 0)
            p += value_len;

        VARINT(p, rec_end, &n_headers, F_HEADER_COUNT);
        if (n_headers < 0)
            FAIL(ST_HEADER_COUNT_NEGATIVE, n_headers, 0);
        left = (int64_t)(rec_end - p);
        if (n_headers > left)
            FAIL(ST_HEADER_COUNT_TOO_LARGE, n_headers, left);
        for (header = 0; header < n_headers; header++) {
            VARINT(p, rec_end, &h_len, F_HEADER_KEY_LENGTH);
            if (h_len < 0)
                FAIL(ST_HEADER_KEY_NEGATIVE, h_len, 0);
            left = (int64_t)(rec_end - p);
            if (h_len > left)
                FAIL(ST_HEADER_KEY_PAST_END, h_len, left);
            p += h_len;
            VARINT(p, rec_end, &h_len, F_HEADER_VALUE_LENGTH);
            if (h_len < -1)
                FAIL(ST_HEADER_VALUE_LENGTH, h_len, 0);
            left = (int64_t)(rec_end - p);
            if (h_len > left)
                FAIL(ST_HEADER_VALUE_PAST_END, h_len, left);
            if (h_len > 0)
                p += h_len;
        }
        header = -1;
        if (p != rec_end)
            FAIL(ST_RECORD_SIZE, length, (int64_t)(p - rec));
        if (compacted && key_len < 0 && note_keyless(r, index) < 0) {
            r->nomem = 1;
            return;
        }
    }
    if (p != end)
        FAIL(ST_TRAILING, (int64_t)(end - p), 0);
    r->status = ST_OK;
    r->record = count;
    r->header = -1;
    /* On success a is the largest timestampDelta and b is 1 (0 and 0 with no records). */
    r->a = count > 0 ? max_delta : 0;
    r->b = count > 0;
}

static PyObject *
recordwalk_walk(PyObject *module, PyObject *args)
{
    Py_buffer view;
    long long count;
    int compacted;
    walk_result r = {0};
    PyObject *keyless = NULL, *result = NULL;
    Py_ssize_t i;

    (void)module;
    if (!PyArg_ParseTuple(args, "y*Lp:walk", &view, &count, &compacted))
        return NULL;
    if (count < 0)
        count = 0;
    if (view.len >= NOGIL_THRESHOLD) {
        Py_BEGIN_ALLOW_THREADS
        walk((const uint8_t *)view.buf, view.len, (int64_t)count, compacted, &r);
        Py_END_ALLOW_THREADS
    } else {
        walk((const uint8_t *)view.buf, view.len, (int64_t)count, compacted, &r);
    }
    PyBuffer_Release(&view);

    if (r.nomem) {
        free(r.keyless);
        return PyErr_NoMemory();
    }
    if (r.status == ST_OK && r.keyless_len > 0) {
        keyless = PyList_New(r.keyless_len);
        if (keyless == NULL)
            goto out;
        for (i = 0; i < r.keyless_len; i++) {
            PyObject *item = PyLong_FromLongLong(r.keyless[i]);
            if (item == NULL)
                goto out;
            PyList_SET_ITEM(keyless, i, item);
        }
    } else {
        keyless = Py_NewRef(Py_None);
    }
    result = Py_BuildValue("(iLLLLO)", r.status, (long long)r.record, (long long)r.header,
                           (long long)r.a, (long long)r.b, keyless);
out:
    Py_XDECREF(keyless);
    free(r.keyless);
    return result;
}

static PyMethodDef recordwalk_methods[] = {
    {"walk", recordwalk_walk, METH_VARARGS,
     "walk(body, count, compacted) -> (status, record, header, a, b, keyless)\n\n"
     "Walk `count` v2 records in an uncompressed records body; see kelp.batchcheck."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef recordwalk_module = {
    PyModuleDef_HEAD_INIT,
    "kelp._recordwalk",
    "Native record walker for kelp.batchcheck (uncompressed Kafka v2 records bodies).",
    0,
    recordwalk_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__recordwalk(void)
{
    return PyModule_Create(&recordwalk_module);
}
