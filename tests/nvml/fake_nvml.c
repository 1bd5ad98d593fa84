/*
 * A fake libnvidia-ml.so.1 for tests: the NVML entry points jlservice reaches through the
 * real pynvml bindings, with the real ABI (struct layouts, versioned structs, return codes,
 * the process-list sizing protocol), answering from a spec file instead of a GPU.
 *
 * The spec file is named by $FAKE_NVML_SPEC and read again whenever it changes (write a
 * new file and rename it over the old one). One statement a line; '#' starts a comment:
 *
 *   init CODE                      nvmlInit* returns CODE (9: driver not loaded)
 *   driver VERSION
 *   delay MILLISECONDS             every device call takes this long (a hung driver); each
 *                                  first appends its name to $FAKE_NVML_SPEC.hung
 *   gpu UUID NAME…                 the next device (index 0, 1, … in order)
 *   I pci BUS_ID                   e.g. 00000000:3B:00.0
 *   I util GPU% MEMORY%
 *   I memory TOTAL RESERVED FREE USED          bytes
 *   I temp CELSIUS | I power MILLIWATTS | I limit MILLIWATTS | I energy MILLIJOULES
 *   I clock sm|mem MHZ
 *   I ecc corrected|uncorrected COUNT
 *   I process PID BYTES            a compute process on device I
 *   I fail FUNCTION|* CODE         FUNCTION (every device call with *) returns CODE
 *
 * A value a spec does not give is NVML_ERROR_NOT_SUPPORTED, as on a GPU without it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
#define nvmlMemory_v2 ((unsigned int)(sizeof(nvmlMemory_v2_t) | (2u << 24)))
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;
typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

#define MAX_GPUS 64
#define MAX_PROCS 512
#define MAX_FAILS 32

struct value { int set; unsigned long long v; };
struct fake_gpu {
    char uuid[96], name[96], pci[32];
    struct value util_gpu, util_mem, total, reserved, free, used, temp, power, limit, energy;
    struct value clock[4], ecc[2]; /* by nvmlClockType_t, nvmlMemoryErrorType_t */
    unsigned nprocs;
    nvmlProcessInfo_t procs[MAX_PROCS];
    unsigned nfails;
    struct { char fn[64]; int code; } fails[MAX_FAILS];
};
typedef struct fake_gpu *nvmlDevice_t;

static struct fake_gpu gpus[MAX_GPUS];
static unsigned ngpus;
static int init_code;
static unsigned delay_ms;
static char driver[80];
static int initialised;
static struct stat loaded; /* of the spec file last read */

static void set(struct value *v, const char *text) { v->set = 1; v->v = strtoull(text, NULL, 10); }

static void parse_line(char *line) {
    char *save, *word = strtok_r(line, " \t\n", &save);
    if (!word || word[0] == '#') return;
    if (!strcmp(word, "init")) { init_code = atoi(strtok_r(NULL, " \t\n", &save)); return; }
    if (!strcmp(word, "delay")) { delay_ms = (unsigned)atoi(strtok_r(NULL, " \t\n", &save)); return; }
    if (!strcmp(word, "driver")) {
        snprintf(driver, sizeof driver, "%s", strtok_r(NULL, " \t\n", &save)); return;
    }
    if (!strcmp(word, "gpu")) {
        if (ngpus == MAX_GPUS) return;
        struct fake_gpu *g = &gpus[ngpus++];
        snprintf(g->uuid, sizeof g->uuid, "%s", strtok_r(NULL, " \t\n", &save));
        char *name = strtok_r(NULL, "\n", &save);
        snprintf(g->name, sizeof g->name, "%s", name ? name : "");
        return;
    }
    unsigned i = (unsigned)atoi(word);
    if (i >= ngpus) return;
    struct fake_gpu *g = &gpus[i];
    char *key = strtok_r(NULL, " \t\n", &save);
    char *a = strtok_r(NULL, " \t\n", &save), *b = strtok_r(NULL, " \t\n", &save);
    char *c = strtok_r(NULL, " \t\n", &save), *d = strtok_r(NULL, " \t\n", &save);
    if (!key || !a) return;
    if (!strcmp(key, "pci")) snprintf(g->pci, sizeof g->pci, "%s", a);
    else if (!strcmp(key, "util") && b) { set(&g->util_gpu, a); set(&g->util_mem, b); }
    else if (!strcmp(key, "memory") && d) {
        set(&g->total, a); set(&g->reserved, b); set(&g->free, c); set(&g->used, d);
    }
    else if (!strcmp(key, "temp")) set(&g->temp, a);
    else if (!strcmp(key, "power")) set(&g->power, a);
    else if (!strcmp(key, "limit")) set(&g->limit, a);
    else if (!strcmp(key, "energy")) set(&g->energy, a);
    else if (!strcmp(key, "clock") && b) set(&g->clock[!strcmp(a, "sm") ? 1 : 2], b);
    else if (!strcmp(key, "ecc") && b) set(&g->ecc[!strcmp(a, "corrected") ? 0 : 1], b);
    else if (!strcmp(key, "process") && b && g->nprocs < MAX_PROCS) {
        nvmlProcessInfo_t *p = &g->procs[g->nprocs++];
        p->pid = (unsigned)atoi(a);
        p->usedGpuMemory = strtoull(b, NULL, 10);
        p->gpuInstanceId = p->computeInstanceId = 0xFFFFFFFFu; /* not a MIG instance */
    }
    else if (!strcmp(key, "fail") && b && g->nfails < MAX_FAILS) {
        snprintf(g->fails[g->nfails].fn, sizeof g->fails[0].fn, "%s", a);
        g->fails[g->nfails++].code = atoi(b);
    }
}

/* Read the spec again if it changed; keep the last one if it is missing. */
static void load(void) {
    const char *path = getenv("FAKE_NVML_SPEC");
    struct stat now;
    if (!path || stat(path, &now) != 0) return;
    if (now.st_ino == loaded.st_ino && now.st_size == loaded.st_size &&
        now.st_mtim.tv_sec == loaded.st_mtim.tv_sec &&
        now.st_mtim.tv_nsec == loaded.st_mtim.tv_nsec)
        return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    memset(gpus, 0, sizeof gpus);
    ngpus = 0;
    init_code = 0;
    delay_ms = 0;
    snprintf(driver, sizeof driver, "%s", "");
    char line[512];
    while (fgets(line, sizeof line, f)) parse_line(line);
    fclose(f);
    loaded = now;
}

static int failure(struct fake_gpu *g, const char *fn) {
    for (unsigned k = 0; k < g->nfails; k++)
        if (!strcmp(g->fails[k].fn, fn) || !strcmp(g->fails[k].fn, "*")) return g->fails[k].code;
    return NVML_SUCCESS;
}

/* A hung driver: say which call hangs (a test waits for that), then hang. */
static void hang(const char *fn) {
    char path[4096];
    const char *spec = getenv("FAKE_NVML_SPEC");
    if (spec && snprintf(path, sizeof path, "%s.hung", spec) < (int)sizeof path) {
        FILE *f = fopen(path, "a");
        if (f) {
            fprintf(f, "%s\n", fn);
            fclose(f);
        }
    }
    usleep(delay_ms * 1000u);
}

/* The checks every device entry point starts with. */
#define DEVICE_CALL(device, out)                                        \
    load();                                                             \
    if (!initialised) return NVML_ERROR_UNINITIALIZED;                  \
    if ((device) < gpus || (device) >= gpus + ngpus || !(out))          \
        return NVML_ERROR_INVALID_ARGUMENT;                             \
    if (delay_ms) hang(__func__);                                       \
    int fail_ = failure((device), __func__);                            \
    if (fail_) return fail_;

static nvmlReturn_t answer(const struct value *v, void *out, size_t size) {
    if (!v->set) return NVML_ERROR_NOT_SUPPORTED;
    if (size == sizeof(unsigned int)) *(unsigned int *)out = (unsigned int)v->v;
    else *(unsigned long long *)out = v->v;
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_text(const char *text, char *out, unsigned int length) {
    if (!out) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(out, text);
    return NVML_SUCCESS;
}

static nvmlReturn_t start(void) {
    load();
    if (init_code) return init_code;
    initialised++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInit_v2(void) { return start(); }
nvmlReturn_t nvmlInitWithFlags(unsigned int flags) { (void)flags; return start(); }

nvmlReturn_t nvmlShutdown(void) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    initialised--;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    load();
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    return copy_text(driver, version, length);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    load();
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = ngpus;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    load();
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (index >= ngpus || !device) return NVML_ERROR_INVALID_ARGUMENT;
    int fail = failure(&gpus[index], __func__);
    if (fail) return fail;
    *device = &gpus[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    DEVICE_CALL(device, uuid);
    return copy_text(device->uuid, uuid, length);
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    DEVICE_CALL(device, name);
    return copy_text(device->name, name, length);
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    DEVICE_CALL(device, pci);
    if (!device->pci[0]) return NVML_ERROR_NOT_SUPPORTED;
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busId, sizeof pci->busId, "%s", device->pci);
    sscanf(device->pci, "%x:%x:%x", &pci->domain, &pci->bus, &pci->device);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.0",
             pci->domain & 0xFFFF, pci->bus, pci->device);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *util) {
    DEVICE_CALL(device, util);
    if (!device->util_gpu.set) return NVML_ERROR_NOT_SUPPORTED;
    util->gpu = (unsigned int)device->util_gpu.v;
    util->memory = (unsigned int)device->util_mem.v;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    DEVICE_CALL(device, memory);
    if (!device->total.set) return NVML_ERROR_NOT_SUPPORTED;
    memory->total = device->total.v;
    memory->free = device->free.v;
    memory->used = device->total.v - device->free.v; /* v1 counts reserved memory as used */
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    DEVICE_CALL(device, memory);
    if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (!device->total.set) return NVML_ERROR_NOT_SUPPORTED;
    memory->total = device->total.v;
    memory->reserved = device->reserved.v;
    memory->free = device->free.v;
    memory->used = device->used.v;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temp) {
    DEVICE_CALL(device, temp);
    if (sensor != 0) return NVML_ERROR_INVALID_ARGUMENT; /* NVML_TEMPERATURE_GPU only */
    return answer(&device->temp, temp, sizeof *temp);
}

nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *milliwatts) {
    DEVICE_CALL(device, milliwatts);
    return answer(&device->power, milliwatts, sizeof *milliwatts);
}

nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *milliwatts) {
    DEVICE_CALL(device, milliwatts);
    return answer(&device->limit, milliwatts, sizeof *milliwatts);
}

nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device,
                                                 unsigned long long *millijoules) {
    DEVICE_CALL(device, millijoules);
    return answer(&device->energy, millijoules, sizeof *millijoules);
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, int type, unsigned int *mhz) {
    DEVICE_CALL(device, mhz);
    if (type < 0 || type > 3) return NVML_ERROR_INVALID_ARGUMENT;
    return answer(&device->clock[type], mhz, sizeof *mhz);
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, int error_type, int counter_type,
                                         unsigned long long *count) {
    DEVICE_CALL(device, count);
    if (error_type < 0 || error_type > 1 || counter_type < 0 || counter_type > 1)
        return NVML_ERROR_INVALID_ARGUMENT;
    return answer(&device->ecc[error_type], count, sizeof *count);
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    DEVICE_CALL(device, count);
    if (*count < device->nprocs) { /* the caller learns the size, then asks again */
        *count = device->nprocs;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (device->nprocs) {
        if (!infos) return NVML_ERROR_INVALID_ARGUMENT;
        memcpy(infos, device->procs, device->nprocs * sizeof *infos);
    }
    *count = device->nprocs;
    return NVML_SUCCESS;
}
