"""The slice of libucp that kelp declares to cffi, in one place for both binding modes.

Two modes read these declarations:

* **API mode** (the normal path) compiles a tiny extension against the real UCX headers. Every
  struct below is declared *in full* (no ``...``), so cffi checks each field's offset and size
  against what the C compiler sees; every constant is re-read from the headers and compared with
  the Python value in :data:`CONSTANTS`. A declaration that drifts from the headers fails the
  build instead of corrupting memory at run time.
* **ABI mode** (no compiler) has no headers to check against. cffi lays the same structs out by
  the platform's C rules, and :mod:`rdma.ucx._binding` compares that layout with the table in
  :mod:`rdma.ucx._layout`, which was recorded from a compiled build.

UCP structs are append-only across 1.x releases: each starts with a ``field_mask`` and the library
reads only the fields whose bits are set. Declaring the newest layout (1.22) is therefore safe for
an older library as long as we set only bits that library knows (see ``MIN_VERSION``).

The few declarations that differ between the modes live in the two preludes: ``ucs_status_t`` is
a *packed* enum (one signed byte, not an int), ``struct sockaddr_storage`` is opaque to us apart
from its size, and the completion callbacks are ``extern "Python"`` in API mode but
``ffi.callback`` objects in ABI mode.
"""

from __future__ import annotations

# The oldest libucp this binding talks to: Debian bookworm's libucx0 (verbs-enabled). Everything
# used below (nbx calls, ucp_ep_query transports) exists there.
MIN_VERSION = (1, 13)

# Values from the 1.22 headers. API mode verifies each against the compiler (see `_build`).
CONSTANTS: dict[str, int] = {
    # ucs_status_t
    "UCS_OK": 0,
    "UCS_INPROGRESS": 1,
    "UCS_ERR_NO_RESOURCE": -2,
    "UCS_ERR_IO_ERROR": -3,
    "UCS_ERR_INVALID_PARAM": -5,
    "UCS_ERR_UNREACHABLE": -6,
    "UCS_ERR_BUSY": -15,
    "UCS_ERR_CANCELED": -16,
    "UCS_ERR_REJECTED": -23,
    "UCS_ERR_NOT_CONNECTED": -24,
    "UCS_ERR_CONNECTION_RESET": -25,
    "UCS_ERR_TIMED_OUT": -20,
    "UCS_ERR_UNSUPPORTED": -22,
    "UCS_ERR_ENDPOINT_TIMEOUT": -80,
    "UCS_ERR_LAST": -100,
    "UCS_THREAD_MODE_SINGLE": 0,
    # ucp_params_t / features
    "UCP_PARAM_FIELD_FEATURES": 1 << 0,
    "UCP_FEATURE_RMA": 1 << 1,
    "UCP_FEATURE_WAKEUP": 1 << 4,
    # ucp_worker_params_t
    "UCP_WORKER_PARAM_FIELD_THREAD_MODE": 1 << 0,
    "UCP_WORKER_PARAM_FIELD_EVENTS": 1 << 2,
    "UCP_WORKER_PARAM_FIELD_FLAGS": 1 << 5,
    "UCP_WORKER_FLAG_IGNORE_REQUEST_LEAK": 1 << 0,
    "UCP_WAKEUP_RMA": 1 << 0,
    "UCP_WAKEUP_TX": 1 << 10,
    "UCP_WAKEUP_RX": 1 << 11,
    "UCP_WORKER_ATTR_FIELD_ADDRESS": 1 << 1,
    # listener
    "UCP_LISTENER_PARAM_FIELD_SOCK_ADDR": 1 << 0,
    "UCP_LISTENER_PARAM_FIELD_CONN_HANDLER": 1 << 2,
    "UCP_LISTENER_ATTR_FIELD_SOCKADDR": 1 << 0,
    # ucp_ep_params_t
    "UCP_EP_PARAM_FIELD_REMOTE_ADDRESS": 1 << 0,
    "UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE": 1 << 1,
    "UCP_EP_PARAM_FIELD_ERR_HANDLER": 1 << 2,
    "UCP_EP_PARAM_FIELD_SOCK_ADDR": 1 << 4,
    "UCP_EP_PARAM_FIELD_FLAGS": 1 << 5,
    "UCP_EP_PARAM_FIELD_CONN_REQUEST": 1 << 6,
    "UCP_EP_PARAMS_FLAGS_CLIENT_SERVER": 1 << 0,
    "UCP_ERR_HANDLING_MODE_NONE": 0,
    "UCP_ERR_HANDLING_MODE_PEER": 1,
    "UCP_EP_CLOSE_FLAG_FORCE": 1 << 0,
    "UCP_EP_ATTR_FIELD_LOCAL_SOCKADDR": 1 << 1,
    "UCP_EP_ATTR_FIELD_REMOTE_SOCKADDR": 1 << 2,
    "UCP_EP_ATTR_FIELD_TRANSPORTS": 1 << 3,
    # memory
    "UCP_MEM_MAP_PARAM_FIELD_ADDRESS": 1 << 0,
    "UCP_MEM_MAP_PARAM_FIELD_LENGTH": 1 << 1,
    "UCP_MEM_MAP_PARAM_FIELD_PROT": 1 << 3,
    "UCP_MEM_MAP_PROT_LOCAL_READ": 1 << 0,
    "UCP_MEM_MAP_PROT_LOCAL_WRITE": 1 << 1,
    "UCP_MEM_MAP_PROT_REMOTE_READ": 1 << 8,
    "UCP_MEM_MAP_PROT_REMOTE_WRITE": 1 << 9,
    # ucp_request_param_t
    "UCP_OP_ATTR_FIELD_CALLBACK": 1 << 1,
    "UCP_OP_ATTR_FIELD_USER_DATA": 1 << 2,
    "UCP_OP_ATTR_FIELD_FLAGS": 1 << 4,
    "UCP_OP_ATTR_FIELD_MEMH": 1 << 8,
}

# Declarations shared by both modes: opaque handles, the structs we fill or read, the functions.
COMMON = r"""
typedef void *ucs_status_ptr_t;
typedef int ucs_thread_mode_t;
typedef int ucs_memory_type_t;
typedef int ucp_err_handling_mode_t;
typedef uint64_t ucp_datatype_t;

typedef struct ucp_context *ucp_context_h;
typedef struct ucp_config ucp_config_t;
typedef struct ucp_worker *ucp_worker_h;
typedef struct ucp_ep *ucp_ep_h;
typedef struct ucp_listener *ucp_listener_h;
typedef struct ucp_conn_request *ucp_conn_request_h;
typedef struct ucp_address ucp_address_t;
typedef struct ucp_mem *ucp_mem_h;
typedef struct ucp_rkey *ucp_rkey_h;
typedef struct ucp_tag_recv_info ucp_tag_recv_info_t;

typedef void (*ucp_request_init_callback_t)(void *request);
typedef void (*ucp_request_cleanup_callback_t)(void *request);
typedef void (*ucp_send_nbx_callback_t)(void *request, ucs_status_t status, void *user_data);
typedef void (*ucp_tag_recv_nbx_callback_t)(void *request, ucs_status_t status,
                                            const ucp_tag_recv_info_t *tag_info,
                                            void *user_data);
typedef void (*ucp_stream_recv_nbx_callback_t)(void *request, ucs_status_t status,
                                               size_t length, void *user_data);
typedef void (*ucp_am_recv_data_nbx_callback_t)(void *request, ucs_status_t status,
                                                size_t length, void *user_data);
typedef void (*ucp_err_handler_cb_t)(void *arg, ucp_ep_h ep, ucs_status_t status);
typedef void (*ucp_listener_accept_callback_t)(ucp_ep_h ep, void *arg);
typedef void (*ucp_listener_conn_callback_t)(ucp_conn_request_h conn_request, void *arg);

typedef struct ucs_sock_addr {
    const struct sockaddr *addr;
    socklen_t addrlen;
} ucs_sock_addr_t;

typedef struct {
    unsigned long ucs_bits[16];
} ucs_cpu_set_t;

typedef struct ucp_params {
    uint64_t field_mask;
    uint64_t features;
    size_t request_size;
    ucp_request_init_callback_t request_init;
    ucp_request_cleanup_callback_t request_cleanup;
    uint64_t tag_sender_mask;
    int mt_workers_shared;
    size_t estimated_num_eps;
    size_t estimated_num_ppn;
    const char *name;
    size_t node_local_id;
} ucp_params_t;

typedef struct ucp_context_attr {
    uint64_t field_mask;
    size_t request_size;
    ucs_thread_mode_t thread_mode;
    uint64_t memory_types;
    char name[32];
    size_t device_counter_size;
} ucp_context_attr_t;

typedef struct ucp_worker_params {
    uint64_t field_mask;
    ucs_thread_mode_t thread_mode;
    ucs_cpu_set_t cpu_mask;
    unsigned events;
    void *user_data;
    int event_fd;
    uint64_t flags;
    const char *name;
    size_t am_alignment;
    uint64_t client_id;
} ucp_worker_params_t;

typedef struct ucp_worker_attr {
    uint64_t field_mask;
    ucs_thread_mode_t thread_mode;
    uint32_t address_flags;
    ucp_address_t *address;
    size_t address_length;
    size_t max_am_header;
    char name[32];
    size_t max_debug_string;
} ucp_worker_attr_t;

typedef struct ucp_listener_conn_handler {
    ucp_listener_conn_callback_t cb;
    void *arg;
} ucp_listener_conn_handler_t;

typedef struct ucp_listener_accept_handler {
    ucp_listener_accept_callback_t cb;
    void *arg;
} ucp_listener_accept_handler_t;

typedef struct ucp_listener_params {
    uint64_t field_mask;
    ucs_sock_addr_t sockaddr;
    ucp_listener_accept_handler_t accept_handler;
    ucp_listener_conn_handler_t conn_handler;
} ucp_listener_params_t;

typedef struct ucp_listener_attr {
    uint64_t field_mask;
    struct sockaddr_storage sockaddr;
} ucp_listener_attr_t;

typedef struct ucp_conn_request_attr {
    uint64_t field_mask;
    struct sockaddr_storage client_address;
    uint64_t client_id;
} ucp_conn_request_attr_t;

typedef struct ucp_err_handler {
    ucp_err_handler_cb_t cb;
    void *arg;
} ucp_err_handler_t;

typedef struct ucp_ep_params {
    uint64_t field_mask;
    const ucp_address_t *address;
    ucp_err_handling_mode_t err_mode;
    ucp_err_handler_t err_handler;
    void *user_data;
    unsigned flags;
    ucs_sock_addr_t sockaddr;
    ucp_conn_request_h conn_request;
    const char *name;
    ucs_sock_addr_t local_sockaddr;
} ucp_ep_params_t;

typedef struct {
    const char *transport_name;
    const char *device_name;
} ucp_transport_entry_t;

typedef struct {
    ucp_transport_entry_t *entries;
    unsigned num_entries;
    size_t entry_size;
} ucp_transports_t;

typedef struct ucp_ep_attr {
    uint64_t field_mask;
    char name[32];
    struct sockaddr_storage local_sockaddr;
    struct sockaddr_storage remote_sockaddr;
    ucp_transports_t transports;
    void *user_data;
} ucp_ep_attr_t;

typedef struct ucp_mem_map_params {
    uint64_t field_mask;
    void *address;
    size_t length;
    unsigned flags;
    unsigned prot;
    ucs_memory_type_t memory_type;
    const void *exported_memh_buffer;
} ucp_mem_map_params_t;

typedef struct {
    uint32_t op_attr_mask;
    uint32_t flags;
    void *request;
    union {
        ucp_send_nbx_callback_t send;
        ucp_tag_recv_nbx_callback_t recv;
        ucp_stream_recv_nbx_callback_t recv_stream;
        ucp_am_recv_data_nbx_callback_t recv_am;
    } cb;
    ucp_datatype_t datatype;
    void *user_data;
    void *reply_buffer;
    ucs_memory_type_t memory_type;
    union {
        size_t *length;
        ucp_tag_recv_info_t *tag_info;
    } recv_info;
    ucp_mem_h memh;
    ucp_datatype_t remote_datatype;
    const void *remote;
    size_t remote_count;
} ucp_request_param_t;

const char *ucs_status_string(ucs_status_t status);

void ucp_get_version(unsigned *major_version, unsigned *minor_version,
                     unsigned *release_number);
const char *ucp_get_version_string(void);
ucs_status_t ucp_config_read(const char *env_prefix, const char *filename,
                             ucp_config_t **config_p);
void ucp_config_release(ucp_config_t *config);
ucs_status_t ucp_config_modify(ucp_config_t *config, const char *name, const char *value);
ucs_status_t ucp_init_version(unsigned api_major_version, unsigned api_minor_version,
                              const ucp_params_t *params, const ucp_config_t *config,
                              ucp_context_h *context_p);
void ucp_cleanup(ucp_context_h context_p);
ucs_status_t ucp_context_query(ucp_context_h context_p, ucp_context_attr_t *attr);
void ucp_context_print_info(const ucp_context_h context, FILE *stream);

ucs_status_t ucp_worker_create(ucp_context_h context, const ucp_worker_params_t *params,
                               ucp_worker_h *worker_p);
void ucp_worker_destroy(ucp_worker_h worker);
ucs_status_t ucp_worker_query(ucp_worker_h worker, ucp_worker_attr_t *attr);
void ucp_worker_release_address(ucp_worker_h worker, ucp_address_t *address);
void ucp_worker_print_info(ucp_worker_h worker, FILE *stream);
unsigned ucp_worker_progress(ucp_worker_h worker);
ucs_status_t ucp_worker_get_efd(ucp_worker_h worker, int *fd);
ucs_status_t ucp_worker_arm(ucp_worker_h worker);
ucs_status_t ucp_worker_signal(ucp_worker_h worker);
ucs_status_ptr_t ucp_worker_flush_nbx(ucp_worker_h worker, const ucp_request_param_t *param);

ucs_status_t ucp_listener_create(ucp_worker_h worker, const ucp_listener_params_t *params,
                                 ucp_listener_h *listener_p);
void ucp_listener_destroy(ucp_listener_h listener);
ucs_status_t ucp_listener_query(ucp_listener_h listener, ucp_listener_attr_t *attr);
ucs_status_t ucp_listener_reject(ucp_listener_h listener, ucp_conn_request_h conn_request);
ucs_status_t ucp_conn_request_query(ucp_conn_request_h conn_request,
                                    ucp_conn_request_attr_t *attr);

ucs_status_t ucp_ep_create(ucp_worker_h worker, const ucp_ep_params_t *params,
                           ucp_ep_h *ep_p);
ucs_status_ptr_t ucp_ep_close_nbx(ucp_ep_h ep, const ucp_request_param_t *param);
ucs_status_ptr_t ucp_ep_flush_nbx(ucp_ep_h ep, const ucp_request_param_t *param);
ucs_status_t ucp_ep_query(ucp_ep_h ep, ucp_ep_attr_t *attr);
void ucp_ep_print_info(ucp_ep_h ep, FILE *stream);

ucs_status_t ucp_mem_map(ucp_context_h context, const ucp_mem_map_params_t *params,
                         ucp_mem_h *memh_p);
ucs_status_t ucp_mem_unmap(ucp_context_h context, ucp_mem_h memh);
ucs_status_t ucp_rkey_pack(ucp_context_h context, ucp_mem_h memh,
                           void **rkey_buffer_p, size_t *size_p);
void ucp_rkey_buffer_release(void *rkey_buffer);
ucs_status_t ucp_ep_rkey_unpack(ucp_ep_h ep, const void *rkey_buffer, ucp_rkey_h *rkey_p);
void ucp_rkey_destroy(ucp_rkey_h rkey);

ucs_status_ptr_t ucp_get_nbx(ucp_ep_h ep, void *buffer, size_t count,
                             uint64_t remote_addr, ucp_rkey_h rkey,
                             const ucp_request_param_t *param);
ucs_status_ptr_t ucp_put_nbx(ucp_ep_h ep, const void *buffer, size_t count,
                             uint64_t remote_addr, ucp_rkey_h rkey,
                             const ucp_request_param_t *param);
ucs_status_t ucp_request_check_status(void *request);
void ucp_request_cancel(ucp_worker_h worker, void *request);
void ucp_request_free(void *request);

FILE *open_memstream(char **ptr, size_t *sizeloc);
int fclose(FILE *stream);
void free(void *ptr);
"""

# The callbacks UCX calls into Python. Names are what `_binding.callback()` looks up.
CALLBACKS: dict[str, str] = {
    "kelp_ucx_send_cb": "void(void *, ucs_status_t, void *)",
    "kelp_ucx_err_cb": "void(void *, ucp_ep_h, ucs_status_t)",
    "kelp_ucx_conn_cb": "void(ucp_conn_request_h, void *)",
}


def _extern_python() -> str:
    lines = ['extern "Python" {']
    for name, sig in CALLBACKS.items():
        ret, args = sig.split("(", 1)
        lines.append(f"    {ret.strip()} {name}({args};")
    lines.append("}")
    return "\n".join(lines)


API_PRELUDE = r"""
typedef int... ucs_status_t;
typedef int... socklen_t;
typedef ... FILE;
struct sockaddr { ...; };
struct sockaddr_storage { ...; };
"""

# ABI mode: the Linux LP64 definitions. `ucs_status_t` is declared UCS_S_PACKED in the headers,
# which makes it one byte; getting this wrong would shift every field after a status.
ABI_PRELUDE = r"""
typedef int8_t ucs_status_t;
typedef uint32_t socklen_t;
typedef struct _IO_FILE FILE;
struct sockaddr { uint16_t sa_family; char sa_data[14]; };
struct sockaddr_storage { uint16_t ss_family; char ss_padding[118]; unsigned long ss_align; };
"""


def api_cdef() -> str:
    """Declarations for the compiled module, including the constants to verify."""
    consts = "\n".join(f"#define {name} ..." for name in CONSTANTS)
    return "\n".join((API_PRELUDE, COMMON, _extern_python(), consts))


def abi_cdef() -> str:
    """Declarations for `ffi.dlopen`: fixed layouts, callbacks made with `ffi.callback`."""
    return "\n".join((ABI_PRELUDE, COMMON))


# The structs whose layout the ABI check compares (see `_layout.py`).
CHECKED_STRUCTS = (
    "ucp_params_t",
    "ucp_context_attr_t",
    "ucp_worker_params_t",
    "ucp_worker_attr_t",
    "ucp_listener_params_t",
    "ucp_listener_attr_t",
    "ucp_conn_request_attr_t",
    "ucp_ep_params_t",
    "ucp_transport_entry_t",
    "ucp_transports_t",
    "ucp_ep_attr_t",
    "ucp_mem_map_params_t",
    "ucp_request_param_t",
    "ucs_sock_addr_t",
    "struct sockaddr_storage",
    "ucs_status_t",
)
