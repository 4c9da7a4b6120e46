/*
 * ivshmem 2.0 device (Jailhouse's "ivshmem v2", PCI 110a:4106) for QEMU,
 * as test support for ivnet.
 *
 * Copyright (c) 2026 the ivnet authors.
 *
 * This program is free software; you can redistribute it and/or modify it
 * under the terms of the GNU General Public License as published by the Free
 * Software Foundation; either version 2 of the License, or (at your option)
 * any later version. See QEMU's COPYING.
 *
 * New code, written from the ivshmem 2.0 specification (Jailhouse
 * Documentation/ivshmem-v2-specification.md) and from how the Jailhouse
 * hypervisor emulates the device; only QEMU's public device APIs are used.
 *
 * What it is
 * ----------
 * A PCI device that behaves like the virtual ivshmem 2.0 device a Jailhouse
 * cell sees:
 *
 *  - config space: 110a:4106, revision 0, class ff / protocol in sub-class
 *    and prog-if, subsystem = vendor/device, status 0010h; the vendor
 *    capability (09h) at 40h, length 20h: Privileged Control (bit 0 =
 *    one-shot, the only writable bit), State Table Size, R/W Section Size,
 *    Output Section Size, Base Address; then, in MSI-X mode, the MSI-X
 *    capability at 60h and interrupt pin 0;
 *  - BAR0: 4 KiB of registers (ID, MAX_PEERS, INT_CONTROL, DOORBELL, STATE),
 *    aligned 32-bit accesses only (others are dropped, read 0, and counted);
 *  - BAR1 (MSI-X mode): 4 KiB, the MSI-X table at 0 and the PBA at 100h (for
 *    up to 16 vectors, as on Jailhouse); the PBA always reads 0 (events for
 *    masked vectors are dropped, not latched);
 *  - no BAR2: the shared memory sits at a fixed guest-physical address (the
 *    "base" property, reported in the capability's Base Address), mapped
 *    with the 2.0 permissions: the state table and the other peers' output
 *    sections are read-only for this VM, the R/W section and the own output
 *    section read-write. A write to a read-only section is dropped and
 *    reported (see below).
 *
 * MSI-X or INTx
 * -------------
 * "vectors" (default: the link's vector count from the server) chooses the
 * interrupt mode, as num_msix_vectors does in a Jailhouse cell config:
 *
 *  - vectors >= 1 (must equal the link's count): MSI-X, one vector per
 *    eventfd of this peer, BAR1 and the MSI-X capability, pin 0;
 *  - vectors = 0: INTx only, as Jailhouse's qemu-arm64 cells see the
 *    device: no MSI-X capability (the vendor capability is the last one), no
 *    BAR1, and Interrupt Pin (config 3Dh) = (slot & 3) + 1 (00:00.0 -> A,
 *    00:01.0 -> B), Jailhouse's rule. An event on this peer's vector 0
 *    (a doorbell with vector 0 aimed at this peer, or a peer's STATE
 *    change) PULSES the INTx line (asserted and deasserted at once) when
 *    INT_CONTROL bit 0 is set and Command.INTX_DISABLE (bit 10) is clear;
 *    otherwise it is dropped and counted in irqs-dropped, as are events on
 *    other vectors (Jailhouse caches an INTx target only for vector 0, so a
 *    doorbell with vector != 0 to an INTx peer reaches nothing; an INTx
 *    link is set up with one vector per peer, or senders use vector 0).
 *    The pulse is what Jailhouse does on ARM: it sets the SPI pending in
 *    GICD_ISPENDR, an edge latch, and its device trees declare the SPI
 *    edge-triggered; so a guest configures the interrupt controller input
 *    edge-triggered here too (a level-triggered GIC SPI or IOAPIC pin sees
 *    a pulse as nothing). No INTx status bit, no pending state: the state
 *    lives in shared memory, as the spec says. One-shot mode clears
 *    INT_CONTROL on each pulse. Bus mastering is not needed for INTx.
 *
 * Where the memory and the interrupts come from
 * ---------------------------------------------
 * ivnet's ivshmem-server (crates/ivshmem-server), over the protocol of
 * QEMU's ivshmem-doorbell (8-byte little-endian messages, fds by
 * SCM_RIGHTS): version 0, our ID, -1 with the memfd, then one eventfd per
 * (peer, vector). The first 4 KiB of the memfd is the server's layout page
 * (magic "IVSHMEM2", version 1, protocol, max peers, state table size,
 * vectors, R/W and output section sizes, state table offset); the 2.0
 * layout (state table | R/W section | output sections) starts at the state
 * table offset, and that is what this device maps at "base". So a VM with
 * this device, a VM with ivshmem-doorbell and a host peer share one link.
 *
 * The device plays the hypervisor's part for its own VM: a STATE write is
 * copied into this peer's state-table entry and, if the value changed,
 * vector 0 of every other peer is rung. A doorbell rings the target's
 * eventfd; the receiving side decides: an event is delivered as MSI-X only
 * if INT_CONTROL bit 0 is set (cleared on delivery in one-shot mode), MSI-X
 * is enabled, neither the function nor the vector is masked, and bus
 * mastering is on (INTx mode: see above); otherwise it is dropped
 * (counted). Peer departures are
 * signalled by the server (state entry to 0, vector 0 rung), as Jailhouse
 * does when a cell stops.
 *
 * Write violations
 * ----------------
 * Each read-only section is a ROM device backed by the memfd: reads go
 * straight to the shared memory (also under KVM, as a read-only memory
 * slot), writes trap into this file, which drops them, prints
 * "ivshmem2: WRITE VIOLATION #<n>: ..." to stderr, counts them in the
 * "violations" property (QMP qom-get), and with stop-on-violation=on
 * raises a guest panic (-action panic=... decides: by default QEMU shuts
 * down), the closest thing to Jailhouse stopping the cell.
 */

#include "qemu/osdep.h"
#include "qemu/units.h"
#include "qemu/error-report.h"
#include "qemu/event_notifier.h"
#include "qemu/main-loop.h"
#include "qemu/module.h"
#include "qemu/atomic.h"
#include "qapi/error.h"
#include "hw/pci/pci.h"
#include "hw/pci/pci_device.h"
#include "hw/pci/msix.h"
#include "hw/qdev-properties.h"
#include "hw/qdev-properties-system.h"
#include "hw/boards.h"
#include "chardev/char-fe.h"
#include "exec/address-spaces.h"
#include "migration/vmstate.h"
#include "system/runstate.h"
#include "qom/object.h"

#define TYPE_IVSHMEM2 "ivshmem2"
OBJECT_DECLARE_SIMPLE_TYPE(IvShmem2State, IVSHMEM2)

#define IVSHMEM2_VENDOR_ID      0x110a
#define IVSHMEM2_DEVICE_ID      0x4106

/* Config space layout (as Jailhouse emulates it). */
#define IVSHMEM2_CFG_VNDR_CAP   0x40
#define IVSHMEM2_CFG_VNDR_LEN   0x20
#define IVSHMEM2_CFG_PRIV_CTRL  (IVSHMEM2_CFG_VNDR_CAP + 0x03)
#define IVSHMEM2_CFG_ST_SIZE    (IVSHMEM2_CFG_VNDR_CAP + 0x04)
#define IVSHMEM2_CFG_RW_SIZE    (IVSHMEM2_CFG_VNDR_CAP + 0x08)
#define IVSHMEM2_CFG_OUT_SIZE   (IVSHMEM2_CFG_VNDR_CAP + 0x10)
#define IVSHMEM2_CFG_ADDRESS    (IVSHMEM2_CFG_VNDR_CAP + 0x18)
#define IVSHMEM2_CFG_MSIX_CAP   0x60
#define IVSHMEM2_PRIV_ONESHOT   0x01

/* BAR0 registers. */
#define IVSHMEM2_REG_BAR_SIZE   0x1000
#define IVSHMEM2_REG_ID         0x00
#define IVSHMEM2_REG_MAX_PEERS  0x04
#define IVSHMEM2_REG_INT_CTRL   0x08
#define IVSHMEM2_REG_DOORBELL   0x0c
#define IVSHMEM2_REG_STATE      0x10
#define IVSHMEM2_INT_ENABLE     0x1

/* BAR1: MSI-X table at 0, PBA at 0x100 for up to 16 vectors. */
#define IVSHMEM2_MSIX_BAR_SIZE  0x1000
#define IVSHMEM2_MSIX_MAX       64
/* "vectors" default: as many as the link has (the server's layout). */
#define IVSHMEM2_VECTORS_OF_LINK UINT32_MAX

/* ivnet's layout page (crates/ivshmem/src/layout.rs). */
#define LAYOUT_PAGE_SIZE        0x1000
#define LAYOUT_ENCODED_LEN      0x30
#define LAYOUT_VERSION          1
#define SHMEM_PAGE              0x1000

/* ivshmem-server protocol (QEMU's ivshmem). */
#define SERVER_PROTOCOL_VERSION 0
#define SERVER_MAX_ID           0xffff

typedef struct IvShmem2Vector {
    IvShmem2State *s;
    uint32_t vector;
} IvShmem2Vector;

typedef struct IvShmem2Peer {
    unsigned nb_eventfds;
    EventNotifier *eventfds;    /* [vectors] */
} IvShmem2Peer;

typedef enum IvShmem2SectionKind {
    SECTION_STATE_TABLE,
    SECTION_RW,
    SECTION_OUTPUT,
} IvShmem2SectionKind;

typedef struct IvShmem2Section {
    IvShmem2State *s;
    MemoryRegion mr;
    IvShmem2SectionKind kind;
    uint32_t peer;              /* owner, for SECTION_OUTPUT */
    uint64_t offset;            /* from the start of the window */
    bool read_only;
} IvShmem2Section;

struct IvShmem2State {
    PCIDevice parent_obj;

    /* properties */
    CharBackend server_chr;
    uint64_t base;
    bool stop_on_violation;
    bool over_ram;
    uint32_t vectors_prop;      /* 0: INTx; else MSI-X */

    /* from the server */
    int shm_fd;
    int64_t id;
    uint16_t protocol;
    uint32_t max_peers;
    uint32_t vectors;           /* eventfds per peer (the link's) */
    uint64_t st_offset;         /* of the state table in the memfd */
    uint64_t st_size, rw_size, out_size, window_size;
    IvShmem2Peer *peers;        /* [max_peers] */
    IvShmem2Vector *own_vectors; /* [vectors] */
    uint8_t msg_buf[8];
    int msg_buffered;

    /* guest-visible state */
    MemoryRegion regs;
    MemoryRegion msix_bar;
    MemoryRegion window;        /* container at "base" */
    IvShmem2Section *sections;
    unsigned nb_sections;
    uint32_t *state_entry;      /* this peer's entry in the state table */
    uint32_t int_ctrl;
    uint32_t state;
    bool intx;                  /* vectors=0: INTx instead of MSI-X */

    /* counters (QOM properties, read with QMP qom-get) */
    uint64_t violations;
    uint64_t bad_register_accesses;
    uint64_t irqs_delivered;
    uint64_t irqs_dropped;
    uint64_t doorbells_sent;
    uint64_t doorbells_dropped;
    uint64_t state_signals_sent;
};

/* ------------------------------------------------------------------------ */
/* Interrupts                                                               */

static bool ivshmem2_vector_deliverable(IvShmem2State *s, uint32_t vector)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint16_t command = pci_get_word(pdev->config + PCI_COMMAND);

    if (s->intx) {
        /* One INTx "vector": Jailhouse's irq_cache has only entry 0. */
        return vector == 0 && !(command & PCI_COMMAND_INTX_DISABLE);
    }
    return msix_enabled(pdev) && !msix_is_masked(pdev, vector) &&
           (command & PCI_COMMAND_MASTER);
}

/* An event on one of our own eventfds: a doorbell or a state change. */
static void ivshmem2_vector_notify(void *opaque)
{
    IvShmem2Vector *v = opaque;
    IvShmem2State *s = v->s;
    EventNotifier *n = &s->peers[s->id].eventfds[v->vector];

    if (!event_notifier_test_and_clear(n)) {
        return;
    }
    /*
     * As in the Jailhouse hypervisor: no pending state anywhere; with
     * interrupts disabled, or the vector not deliverable, the event is gone.
     */
    if (!(s->int_ctrl & IVSHMEM2_INT_ENABLE) ||
        !ivshmem2_vector_deliverable(s, v->vector)) {
        s->irqs_dropped++;
        return;
    }
    if (PCI_DEVICE(s)->config[IVSHMEM2_CFG_PRIV_CTRL] & IVSHMEM2_PRIV_ONESHOT) {
        s->int_ctrl = 0;
    }
    s->irqs_delivered++;
    if (s->intx) {
        /* An edge, like Jailhouse's write to GICD_ISPENDR. */
        pci_irq_assert(PCI_DEVICE(s));
        pci_irq_deassert(PCI_DEVICE(s));
    } else {
        msix_notify(PCI_DEVICE(s), v->vector);
    }
}

/* Rings (peer, vector) if the server gave us its eventfd. */
static bool ivshmem2_ring(IvShmem2State *s, uint32_t peer, uint32_t vector)
{
    if (peer >= s->max_peers || vector >= s->peers[peer].nb_eventfds) {
        return false;
    }
    /* What the CPU wrote before the register write is visible first. */
    smp_mb();
    event_notifier_set(&s->peers[peer].eventfds[vector]);
    return true;
}

static void ivshmem2_set_state(IvShmem2State *s, uint32_t value)
{
    uint32_t old = s->state;

    s->state = value;
    qatomic_set(s->state_entry, cpu_to_le32(value));
    smp_mb();
    if (value == old) {
        return;
    }
    for (uint32_t peer = 0; peer < s->max_peers; peer++) {
        if (peer != s->id && ivshmem2_ring(s, peer, 0)) {
            s->state_signals_sent++;
        }
    }
}

/* ------------------------------------------------------------------------ */
/* BAR0                                                                     */

static uint64_t ivshmem2_reg_read(void *opaque, hwaddr addr, unsigned size)
{
    IvShmem2State *s = opaque;

    if (size != 4 || (addr & 3)) {
        s->bad_register_accesses++;
        warn_report("ivshmem2: %u-byte register read at 0x%" HWADDR_PRIx
                    " ignored (aligned 32-bit accesses only)", size, addr);
        return 0;
    }
    switch (addr) {
    case IVSHMEM2_REG_ID:
        return s->id;
    case IVSHMEM2_REG_MAX_PEERS:
        return s->max_peers;
    case IVSHMEM2_REG_INT_CTRL:
        return s->int_ctrl;
    case IVSHMEM2_REG_STATE:
        return s->state;
    default:
        /* DOORBELL reads and unbacked offsets: 0. */
        return 0;
    }
}

static void ivshmem2_reg_write(void *opaque, hwaddr addr, uint64_t val,
                               unsigned size)
{
    IvShmem2State *s = opaque;

    if (size != 4 || (addr & 3)) {
        s->bad_register_accesses++;
        warn_report("ivshmem2: %u-byte register write at 0x%" HWADDR_PRIx
                    " ignored (aligned 32-bit accesses only)", size, addr);
        return;
    }
    switch (addr) {
    case IVSHMEM2_REG_INT_CTRL:
        s->int_ctrl = val & IVSHMEM2_INT_ENABLE;
        break;
    case IVSHMEM2_REG_DOORBELL:
        if (ivshmem2_ring(s, val >> 16, val & 0xffff)) {
            s->doorbells_sent++;
        } else {
            s->doorbells_dropped++;
        }
        break;
    case IVSHMEM2_REG_STATE:
        ivshmem2_set_state(s, val);
        break;
    default:
        /* ID, MAX_PEERS and unbacked offsets: ignored. */
        break;
    }
}

static const MemoryRegionOps ivshmem2_reg_ops = {
    .read = ivshmem2_reg_read,
    .write = ivshmem2_reg_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    /* Let every access through as it is, so that bad ones can be counted. */
    .valid = { .min_access_size = 1, .max_access_size = 8, .unaligned = true },
    .impl = { .min_access_size = 1, .max_access_size = 8, .unaligned = true },
};

/* ------------------------------------------------------------------------ */
/* Shared memory                                                            */

static const char *ivshmem2_section_name(IvShmem2Section *sec)
{
    switch (sec->kind) {
    case SECTION_STATE_TABLE:
        return "state table";
    case SECTION_RW:
        return "R/W section";
    default:
        return "output section";
    }
}

static uint64_t ivshmem2_ro_read(void *opaque, hwaddr addr, unsigned size)
{
    IvShmem2Section *sec = opaque;
    const uint8_t *p = (const uint8_t *)memory_region_get_ram_ptr(&sec->mr) + addr;

    /* Only reached outside ROMD mode paths; reads are direct otherwise. */
    return ldn_le_p(p, size);
}

static void ivshmem2_ro_write(void *opaque, hwaddr addr, uint64_t val,
                              unsigned size)
{
    IvShmem2Section *sec = opaque;
    IvShmem2State *s = sec->s;
    uint64_t n = ++s->violations;

    if (sec->kind == SECTION_OUTPUT) {
        error_report("ivshmem2: WRITE VIOLATION #%" PRIu64 ": peer %" PRId64
                     " wrote %u bytes (0x%" PRIx64 ") into peer %u's output "
                     "section at +0x%" HWADDR_PRIx " (guest-physical 0x%"
                     PRIx64 "); dropped", n, s->id, size, val, sec->peer, addr,
                     s->base + sec->offset + addr);
    } else {
        error_report("ivshmem2: WRITE VIOLATION #%" PRIu64 ": peer %" PRId64
                     " wrote %u bytes (0x%" PRIx64 ") into the %s at +0x%"
                     HWADDR_PRIx " (guest-physical 0x%" PRIx64 "); dropped",
                     n, s->id, size, val, ivshmem2_section_name(sec), addr,
                     s->base + sec->offset + addr);
    }
    if (s->stop_on_violation) {
        qemu_system_guest_panicked(NULL);
    }
}

static const MemoryRegionOps ivshmem2_ro_ops = {
    .read = ivshmem2_ro_read,
    .write = ivshmem2_ro_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    .valid = { .min_access_size = 1, .max_access_size = 8, .unaligned = true },
    .impl = { .min_access_size = 1, .max_access_size = 8, .unaligned = true },
};

static bool ivshmem2_map_section(IvShmem2State *s, IvShmem2Section *sec,
                                 uint64_t size, Error **errp)
{
    g_autofree char *name = NULL;

    if (sec->kind == SECTION_OUTPUT) {
        name = g_strdup_printf("ivshmem2-output%u", sec->peer);
    } else {
        name = g_strdup(sec->kind == SECTION_STATE_TABLE ? "ivshmem2-state-table"
                                                         : "ivshmem2-rw");
    }
    if (!memory_region_init_ram_from_fd(&sec->mr, OBJECT(s), name, size,
                                        RAM_SHARED, s->shm_fd,
                                        s->st_offset + sec->offset, errp)) {
        return false;
    }
    if (sec->read_only) {
        /*
         * Turn the fd-backed RAM into a ROM device in ROMD mode: reads stay
         * direct (TCG host pointer, KVM read-only memory slot), writes are
         * dispatched to ivshmem2_ro_ops. QEMU has no public constructor for
         * a ROM device over an existing fd, hence the fields.
         */
        sec->mr.ram = false;
        sec->mr.rom_device = true;
        sec->mr.romd_mode = true;
        sec->mr.ops = &ivshmem2_ro_ops;
        sec->mr.opaque = sec;
    }
    memory_region_add_subregion(&s->window, sec->offset, &sec->mr);
    return true;
}

/*
 * Whether guest RAM (or ROM) is mapped anywhere in [base, base + size) of
 * the system address space (the machine's RAM is mapped before -device
 * devices realize); *at gets the first such address.
 */
static bool ivshmem2_hits_ram(uint64_t base, uint64_t size, uint64_t *at)
{
    uint64_t addr = base, end = base + size;

    while (addr < end) {
        MemoryRegionSection sec = memory_region_find(get_system_memory(),
                                                     addr, end - addr);
        bool ram;

        if (!sec.mr) {
            return false;
        }
        ram = memory_region_is_ram(sec.mr);
        addr = sec.offset_within_address_space;
        memory_region_unref(sec.mr);
        if (ram) {
            *at = addr;
            return true;
        }
        addr += int128_get64(sec.size);
    }
    return false;
}

static bool ivshmem2_map_window(IvShmem2State *s, Error **errp)
{
    uint64_t off = 0, ram_at;
    unsigned i = 0;

    if (s->base & (SHMEM_PAGE - 1)) {
        error_setg(errp, "ivshmem2: base 0x%" PRIx64 " is not page-aligned",
                   s->base);
        return false;
    }
    if (!s->over_ram && ivshmem2_hits_ram(s->base, s->window_size, &ram_at)) {
        error_setg(errp, "ivshmem2: the window 0x%" PRIx64 "..0x%" PRIx64
                   " covers guest RAM at 0x%" PRIx64 "; choose a base outside "
                   "RAM, or over-ram=on to hide that RAM behind the window",
                   s->base, s->base + s->window_size - 1, ram_at);
        return false;
    }
    memory_region_init(&s->window, OBJECT(s), "ivshmem2-window",
                       s->window_size);
    s->nb_sections = 1 + (s->rw_size ? 1 : 0) + s->max_peers;
    s->sections = g_new0(IvShmem2Section, s->nb_sections);

    s->sections[i] = (IvShmem2Section) {
        .s = s, .kind = SECTION_STATE_TABLE, .offset = off, .read_only = true,
    };
    if (!ivshmem2_map_section(s, &s->sections[i++], s->st_size, errp)) {
        return false;
    }
    off += s->st_size;
    if (s->rw_size) {
        s->sections[i] = (IvShmem2Section) {
            .s = s, .kind = SECTION_RW, .offset = off, .read_only = false,
        };
        if (!ivshmem2_map_section(s, &s->sections[i++], s->rw_size, errp)) {
            return false;
        }
        off += s->rw_size;
    }
    for (uint32_t peer = 0; peer < s->max_peers; peer++) {
        s->sections[i] = (IvShmem2Section) {
            .s = s, .kind = SECTION_OUTPUT, .peer = peer, .offset = off,
            .read_only = peer != s->id,
        };
        if (!ivshmem2_map_section(s, &s->sections[i++], s->out_size, errp)) {
            return false;
        }
        off += s->out_size;
    }
    s->state_entry = (uint32_t *)memory_region_get_ram_ptr(&s->sections[0].mr)
                     + s->id;
    memory_region_add_subregion_overlap(get_system_memory(), s->base,
                                        &s->window, 1);
    return true;
}

static uint64_t le64_at(const uint8_t *p)
{
    return ldq_le_p(p);
}

/* Reads and checks ivnet's layout page at the start of the memfd. */
static bool ivshmem2_read_layout(IvShmem2State *s, Error **errp)
{
    uint8_t page[LAYOUT_ENCODED_LEN];
    struct stat st;
    uint64_t end;

    if (fstat(s->shm_fd, &st) < 0) {
        error_setg_errno(errp, errno, "ivshmem2: fstat of the shared memory");
        return false;
    }
    if (pread(s->shm_fd, page, sizeof(page), 0) != sizeof(page)) {
        error_setg(errp, "ivshmem2: cannot read the layout page");
        return false;
    }
    if (memcmp(page, "IVSHMEM2", 8) != 0) {
        error_setg(errp, "ivshmem2: no layout page (magic is not IVSHMEM2): "
                   "the server must be ivnet's ivshmem-server");
        return false;
    }
    if (ldl_le_p(page + 0x08) != LAYOUT_VERSION) {
        error_setg(errp, "ivshmem2: layout page version %u, expected %u",
                   ldl_le_p(page + 0x08), LAYOUT_VERSION);
        return false;
    }
    s->protocol = lduw_le_p(page + 0x0c);
    s->max_peers = lduw_le_p(page + 0x0e);
    s->st_size = ldl_le_p(page + 0x10);
    s->vectors = ldl_le_p(page + 0x14);
    s->rw_size = le64_at(page + 0x18);
    s->out_size = le64_at(page + 0x20);
    s->st_offset = le64_at(page + 0x28);

    if (s->max_peers < 2 || s->vectors < 1 || s->vectors > IVSHMEM2_MSIX_MAX ||
        s->st_size < 4 * (uint64_t)s->max_peers || s->out_size == 0 ||
        s->st_offset < LAYOUT_PAGE_SIZE ||
        ((s->st_offset | s->st_size | s->rw_size | s->out_size) &
         (SHMEM_PAGE - 1))) {
        error_setg(errp, "ivshmem2: invalid layout page (peers %u, vectors %u, "
                   "state table 0x%" PRIx64 "@0x%" PRIx64 ", R/W 0x%" PRIx64
                   ", output 0x%" PRIx64 ")", s->max_peers, s->vectors,
                   s->st_size, s->st_offset, s->rw_size, s->out_size);
        return false;
    }
    /* Sizes fit 32 bits each after the check above only if small: check. */
    if (s->rw_size > (1ULL << 40) || s->out_size > (1ULL << 40)) {
        error_setg(errp, "ivshmem2: layout sections too large");
        return false;
    }
    s->window_size = s->st_size + s->rw_size + s->max_peers * s->out_size;
    end = s->st_offset + s->window_size;
    if (end > (uint64_t)st.st_size) {
        error_setg(errp, "ivshmem2: layout ends at 0x%" PRIx64 ", beyond the "
                   "shared memory (0x%" PRIx64 " bytes)", end,
                   (uint64_t)st.st_size);
        return false;
    }
    if (s->id >= s->max_peers) {
        error_setg(errp, "ivshmem2: the server gave ID %" PRId64 ", but the "
                   "layout has %u peers", s->id, s->max_peers);
        return false;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* Server messages                                                          */

static void ivshmem2_add_eventfd(IvShmem2State *s, int64_t peer, int fd)
{
    IvShmem2Peer *p;
    EventNotifier *n;

    if (peer >= s->max_peers) {
        warn_report("ivshmem2: eventfd for peer %" PRId64 " beyond max peers "
                    "%u ignored", peer, s->max_peers);
        close(fd);
        return;
    }
    p = &s->peers[peer];
    if (p->nb_eventfds >= s->vectors) {
        warn_report("ivshmem2: too many eventfds for peer %" PRId64, peer);
        close(fd);
        return;
    }
    n = &p->eventfds[p->nb_eventfds];
    event_notifier_init_fd(n, fd);
    /*
     * The chardev made the fd blocking (O_NONBLOCK survives SCM_RIGHTS),
     * which is shared with every holder of the eventfd: non-blocking again,
     * for our poll and for the others' (ivshmem-doorbell does the same).
     */
    g_unix_set_fd_nonblocking(fd, true, NULL);
    if (peer == s->id) {
        qemu_set_fd_handler(fd, ivshmem2_vector_notify, NULL,
                            &s->own_vectors[p->nb_eventfds]);
    }
    p->nb_eventfds++;
}

static void ivshmem2_close_peer(IvShmem2State *s, int64_t peer)
{
    IvShmem2Peer *p;

    if (peer < 0 || peer >= s->max_peers || peer == s->id) {
        warn_report("ivshmem2: bad disconnect message for peer %" PRId64, peer);
        return;
    }
    p = &s->peers[peer];
    for (unsigned i = 0; i < p->nb_eventfds; i++) {
        event_notifier_cleanup(&p->eventfds[i]);
    }
    p->nb_eventfds = 0;
}

/* A message after setup (the shared memory is mapped). */
static void ivshmem2_process_msg(IvShmem2State *s, int64_t msg, int fd)
{
    if (msg < -1 || msg > SERVER_MAX_ID || msg == -1) {
        warn_report("ivshmem2: unexpected server message %" PRId64, msg);
        if (fd >= 0) {
            close(fd);
        }
        return;
    }
    if (fd >= 0) {
        ivshmem2_add_eventfd(s, msg, fd);
    } else {
        ivshmem2_close_peer(s, msg);
    }
}

static int ivshmem2_can_receive(void *opaque)
{
    IvShmem2State *s = opaque;

    return sizeof(s->msg_buf) - s->msg_buffered;
}

static void ivshmem2_read(void *opaque, const uint8_t *buf, int size)
{
    IvShmem2State *s = opaque;
    int64_t msg;
    int fd;

    memcpy(s->msg_buf + s->msg_buffered, buf, size);
    s->msg_buffered += size;
    if (s->msg_buffered < sizeof(s->msg_buf)) {
        return;
    }
    s->msg_buffered = 0;
    msg = ldq_le_p(s->msg_buf);
    fd = qemu_chr_fe_get_msgfd(&s->server_chr);
    ivshmem2_process_msg(s, msg, fd);
}

static bool ivshmem2_recv_msg(IvShmem2State *s, int64_t *msg, int *fd,
                              Error **errp)
{
    uint8_t buf[8];
    int n = 0, ret;

    do {
        ret = qemu_chr_fe_read_all(&s->server_chr, buf + n, sizeof(buf) - n);
        if (ret < 0) {
            if (ret == -EINTR) {
                continue;
            }
            error_setg_errno(errp, -ret, "ivshmem2: read from the server");
            return false;
        }
        if (ret == 0) {
            error_setg(errp, "ivshmem2: the server closed the connection");
            return false;
        }
        n += ret;
    } while (n < sizeof(buf));
    *msg = ldq_le_p(buf);
    *fd = qemu_chr_fe_get_msgfd(&s->server_chr);
    return true;
}

/*
 * Synchronous setup, as QEMU's ivshmem-doorbell does it (the server must be
 * listening before QEMU starts): version, ID, the memfd, then the eventfds
 * the server sends at once — the present peers' and, last, our own. We
 * read until we hold all our own vectors, so that the device is complete
 * when the guest starts; later connects arrive through ivshmem2_read().
 */
static bool ivshmem2_recv_setup(IvShmem2State *s, Error **errp)
{
    int64_t msg;
    int fd;

    if (!ivshmem2_recv_msg(s, &msg, &fd, errp)) {
        return false;
    }
    if (fd >= 0 || msg != SERVER_PROTOCOL_VERSION) {
        error_setg(errp, "ivshmem2: server sent version %" PRId64 "%s, "
                   "expected %d", msg, fd >= 0 ? " with an fd" : "",
                   SERVER_PROTOCOL_VERSION);
        if (fd >= 0) {
            close(fd);
        }
        return false;
    }
    if (!ivshmem2_recv_msg(s, &msg, &fd, errp)) {
        return false;
    }
    if (fd >= 0 || msg < 0 || msg > SERVER_MAX_ID) {
        error_setg(errp, "ivshmem2: server sent an invalid ID message");
        if (fd >= 0) {
            close(fd);
        }
        return false;
    }
    s->id = msg;

    if (!ivshmem2_recv_msg(s, &msg, &fd, errp)) {
        return false;
    }
    if (msg != -1 || fd < 0) {
        error_setg(errp, "ivshmem2: expected the shared memory, got message "
                   "%" PRId64 "%s", msg, fd >= 0 ? "" : " without an fd");
        if (fd >= 0) {
            close(fd);
        }
        return false;
    }
    s->shm_fd = fd;
    if (!ivshmem2_read_layout(s, errp)) {
        return false;
    }

    s->peers = g_new0(IvShmem2Peer, s->max_peers);
    for (uint32_t i = 0; i < s->max_peers; i++) {
        s->peers[i].eventfds = g_new0(EventNotifier, s->vectors);
    }
    s->own_vectors = g_new0(IvShmem2Vector, s->vectors);
    for (uint32_t v = 0; v < s->vectors; v++) {
        s->own_vectors[v] = (IvShmem2Vector) { .s = s, .vector = v };
    }
    while (s->peers[s->id].nb_eventfds < s->vectors) {
        if (!ivshmem2_recv_msg(s, &msg, &fd, errp)) {
            return false;
        }
        if (fd < 0 && msg == s->id) {
            error_setg(errp, "ivshmem2: server disconnected our own ID");
            return false;
        }
        ivshmem2_process_msg(s, msg, fd);
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* PCI                                                                      */

static bool ivshmem2_init_config(IvShmem2State *s, Error **errp)
{
    PCIDevice *pdev = PCI_DEVICE(s);
    uint8_t *c = pdev->config;
    int cap;

    /* Class ff, protocol in sub-class (bits 8-15) and prog-if (bits 0-7). */
    pci_config_set_class(c, 0xff00 | (s->protocol >> 8));
    pci_config_set_prog_interface(c, s->protocol & 0xff);
    pci_config_set_revision(c, 0);
    pci_set_word(c + PCI_SUBSYSTEM_VENDOR_ID, IVSHMEM2_VENDOR_ID);
    pci_set_word(c + PCI_SUBSYSTEM_ID, IVSHMEM2_DEVICE_ID);
    /*
     * MSI-X: no INTx (pin 0). INTx only: Jailhouse's pin rule, which
     * rotates the pin with the device number.
     */
    pci_config_set_interrupt_pin(c, s->intx ? (PCI_SLOT(pdev->devfn) & 3) + 1
                                            : 0);
    /* Writable command bits: I/O, memory, bus master, INTx disable. */
    pci_set_word(pdev->wmask + PCI_COMMAND,
                 PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER |
                 PCI_COMMAND_INTX_DISABLE);

    /* pci_add_capability() prepends, so MSI-X (0x60) goes in first. */
    if (!s->intx &&
        msix_init(pdev, s->vectors, &s->msix_bar, 1, 0, &s->msix_bar, 1,
                  QEMU_ALIGN_UP(s->vectors * PCI_MSIX_ENTRY_SIZE, 0x100),
                  IVSHMEM2_CFG_MSIX_CAP, errp) < 0) {
        return false;
    }
    cap = pci_add_capability(pdev, PCI_CAP_ID_VNDR, IVSHMEM2_CFG_VNDR_CAP,
                             IVSHMEM2_CFG_VNDR_LEN, errp);
    if (cap < 0) {
        return false;
    }
    c[cap + PCI_CAP_FLAGS] = IVSHMEM2_CFG_VNDR_LEN;
    c[IVSHMEM2_CFG_PRIV_CTRL] = 0;
    pci_set_long(c + IVSHMEM2_CFG_ST_SIZE, s->st_size);
    pci_set_quad(c + IVSHMEM2_CFG_RW_SIZE, s->rw_size);
    pci_set_quad(c + IVSHMEM2_CFG_OUT_SIZE, s->out_size);
    pci_set_quad(c + IVSHMEM2_CFG_ADDRESS, s->base);
    /* Only the one-shot bit is writable. */
    pdev->wmask[IVSHMEM2_CFG_PRIV_CTRL] = IVSHMEM2_PRIV_ONESHOT;
    return true;
}

static void ivshmem2_realize(PCIDevice *pdev, Error **errp)
{
    IvShmem2State *s = IVSHMEM2(pdev);

    s->shm_fd = -1;
    if (!qemu_chr_fe_backend_connected(&s->server_chr)) {
        error_setg(errp, "ivshmem2: needs chardev=<socket to ivshmem-server>");
        return;
    }
    if (!ivshmem2_recv_setup(s, errp)) {
        return;
    }
    if (s->vectors_prop != IVSHMEM2_VECTORS_OF_LINK && s->vectors_prop != 0 &&
        s->vectors_prop != s->vectors) {
        error_setg(errp, "ivshmem2: vectors=%u, but the link has %u vectors "
                   "per peer (0 = INTx, or leave vectors out)",
                   s->vectors_prop, s->vectors);
        return;
    }
    s->intx = s->vectors_prop == 0;

    memory_region_init_io(&s->regs, OBJECT(s), &ivshmem2_reg_ops, s,
                          "ivshmem2-regs", IVSHMEM2_REG_BAR_SIZE);
    pci_register_bar(pdev, 0, PCI_BASE_ADDRESS_SPACE_MEMORY, &s->regs);
    if (!s->intx) {
        memory_region_init(&s->msix_bar, OBJECT(s), "ivshmem2-msix",
                           IVSHMEM2_MSIX_BAR_SIZE);
        pci_register_bar(pdev, 1, PCI_BASE_ADDRESS_SPACE_MEMORY,
                         &s->msix_bar);
    }

    if (!ivshmem2_init_config(s, errp)) {
        return;
    }
    /* Once: msix_reset() keeps the vectors in use. */
    for (uint32_t v = 0; !s->intx && v < s->vectors; v++) {
        msix_vector_use(pdev, v);
    }
    if (!ivshmem2_map_window(s, errp)) {
        return;
    }
    qemu_chr_fe_set_handlers(&s->server_chr, ivshmem2_can_receive,
                             ivshmem2_read, NULL, NULL, s, NULL, true);
    if (s->intx) {
        info_report("ivshmem2: peer %" PRId64 " of %u, protocol 0x%04x, INTx "
                    "pin %c (the link has %u vectors; only vector 0 "
                    "interrupts), window 0x%" PRIx64 " bytes at 0x%" PRIx64
                    " (state table 0x%" PRIx64 ", R/W 0x%" PRIx64 ", output "
                    "0x%" PRIx64 ")", s->id, s->max_peers, s->protocol,
                    'A' + pdev->config[PCI_INTERRUPT_PIN] - 1, s->vectors,
                    s->window_size, s->base, s->st_size, s->rw_size,
                    s->out_size);
    } else {
        info_report("ivshmem2: peer %" PRId64 " of %u, protocol 0x%04x, %u "
                    "MSI-X vectors, window 0x%" PRIx64 " bytes at 0x%" PRIx64
                    " (state table 0x%" PRIx64 ", R/W 0x%" PRIx64 ", output "
                    "0x%" PRIx64 ")", s->id, s->max_peers, s->protocol,
                    s->vectors, s->window_size, s->base, s->st_size,
                    s->rw_size, s->out_size);
    }
}

static void ivshmem2_exit(PCIDevice *pdev)
{
    IvShmem2State *s = IVSHMEM2(pdev);

    if (s->sections) {
        memory_region_del_subregion(get_system_memory(), &s->window);
    }
    if (s->peers) {
        for (uint32_t peer = 0; peer < s->max_peers; peer++) {
            IvShmem2Peer *p = &s->peers[peer];

            for (unsigned i = 0; i < p->nb_eventfds; i++) {
                if (peer == s->id) {
                    qemu_set_fd_handler(event_notifier_get_fd(&p->eventfds[i]),
                                        NULL, NULL, NULL);
                }
                event_notifier_cleanup(&p->eventfds[i]);
            }
            g_free(p->eventfds);
        }
        g_free(s->peers);
        s->peers = NULL;
    }
    g_free(s->own_vectors);
    if (msix_present(pdev)) {
        msix_uninit(pdev, &s->msix_bar, &s->msix_bar);
    }
    if (s->shm_fd >= 0) {
        close(s->shm_fd);
        s->shm_fd = -1;
    }
}

/* Device reset (as Jailhouse's cell reset): everything off, state 0. */
static void ivshmem2_reset(DeviceState *dev)
{
    IvShmem2State *s = IVSHMEM2(dev);
    PCIDevice *pdev = PCI_DEVICE(dev);

    s->int_ctrl = 0;
    pdev->config[IVSHMEM2_CFG_PRIV_CTRL] = 0;
    /*
     * MSI-X (disabled, all vectors masked) and the INTx line (never left
     * asserted: pulses only) are reset by the PCI core.
     */
    if (s->state_entry) {
        ivshmem2_set_state(s, 0);
    }
}

static const VMStateDescription ivshmem2_vmsd = {
    .name = TYPE_IVSHMEM2,
    .unmigratable = 1,
};

static const Property ivshmem2_properties[] = {
    DEFINE_PROP_CHR("chardev", IvShmem2State, server_chr),
    /* Guest-physical base of the window: above RAM, below q35's PCI hole. */
    DEFINE_PROP_UINT64("base", IvShmem2State, base, 0x20000000),
    DEFINE_PROP_BOOL("stop-on-violation", IvShmem2State, stop_on_violation,
                     false),
    /* Whether the window may hide guest RAM (off: realize fails). */
    DEFINE_PROP_BOOL("over-ram", IvShmem2State, over_ram, false),
    /* 0: INTx only; default: MSI-X with the link's vector count. */
    DEFINE_PROP_UINT32("vectors", IvShmem2State, vectors_prop,
                       IVSHMEM2_VECTORS_OF_LINK),
};

static void ivshmem2_instance_init(Object *obj)
{
    IvShmem2State *s = IVSHMEM2(obj);

    s->shm_fd = -1;
    object_property_add_uint64_ptr(obj, "violations", &s->violations,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "bad-register-accesses",
                                   &s->bad_register_accesses,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "irqs-delivered", &s->irqs_delivered,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "irqs-dropped", &s->irqs_dropped,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "doorbells-sent", &s->doorbells_sent,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "doorbells-dropped",
                                   &s->doorbells_dropped, OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "state-signals-sent",
                                   &s->state_signals_sent, OBJ_PROP_FLAG_READ);
}

static void ivshmem2_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    PCIDeviceClass *k = PCI_DEVICE_CLASS(klass);

    k->realize = ivshmem2_realize;
    k->exit = ivshmem2_exit;
    k->vendor_id = IVSHMEM2_VENDOR_ID;
    k->device_id = IVSHMEM2_DEVICE_ID;
    k->subsystem_vendor_id = IVSHMEM2_VENDOR_ID;
    k->subsystem_id = IVSHMEM2_DEVICE_ID;
    k->class_id = 0xff00;
    k->revision = 0;
    device_class_set_legacy_reset(dc, ivshmem2_reset);
    device_class_set_props(dc, ivshmem2_properties);
    dc->vmsd = &ivshmem2_vmsd;
    dc->desc = "Inter-VM shared memory, version 2.0 (Jailhouse ivshmem v2)";
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
}

static const TypeInfo ivshmem2_info = {
    .name = TYPE_IVSHMEM2,
    .parent = TYPE_PCI_DEVICE,
    .instance_size = sizeof(IvShmem2State),
    .instance_init = ivshmem2_instance_init,
    .class_init = ivshmem2_class_init,
    .interfaces = (InterfaceInfo[]) {
        { INTERFACE_CONVENTIONAL_PCI_DEVICE },
        { },
    },
};

static void ivshmem2_register_types(void)
{
    type_register_static(&ivshmem2_info);
}

type_init(ivshmem2_register_types)
