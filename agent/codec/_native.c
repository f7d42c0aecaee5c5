/*
 * The codec's compiled loops: the CTX entropy stage and the MED predictor.
 *
 * CTX: static, context-modelled rANS over each plane of a frame.
 *
 * Why it exists: zstd's Huffman stage spends at least one bit on every residual byte that is not part of a
 * match, so the small, scattered values left by prediction (and by near-lossless quantisation) cost far more
 * than their entropy. Here every sample is coded with the histogram of its own context, the activity of its
 * already-coded neighbours, by an rANS coder that can spend a few hundredths of a bit on a likely zero.
 * The byte layout is specified in docs/wire-format.md; this file follows that text.
 *
 * The heavy loops run without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <pthread.h>

#define PROB_BITS 14
#define PROB_SCALE (1u << PROB_BITS)
#define RANS_L (1u << 23)
#define NCTX 16
#define NSTATES 4 /* interleaved rANS states: sample i uses state i mod 4 */
#define MAX_ACT (6 * 128)
#define MIN_TABLE_SAMPLES 4096
#define CENTRE_ROWS 8     /* the centre is found in at least this many rows, */
#define CENTRE_ROW_STEP 32 /* spread this far apart at most */

/* act = 2|a| + 2|b| + |c| + |d| over the magnitudes of the left, upper, upper-left and upper-right symbols;
   the context is the number of these thresholds that act reaches. */
static const int ACT_THRESHOLDS[NCTX - 1] = {1, 2, 3, 4, 6, 8, 11, 15, 20, 27, 36, 48, 64, 90, 128};
static uint8_t ACT_CTX[MAX_ACT + 1];
static uint8_t MAG[256];  /* |int8(symbol)| */
static uint16_t MAG2[256]; /* 2 |int8(symbol)| */

static void init_tables(void) {
    for (int act = 0; act <= MAX_ACT; act++) {
        int ctx = 0;
        while (ctx < NCTX - 1 && act >= ACT_THRESHOLDS[ctx]) ctx++;
        ACT_CTX[act] = (uint8_t)ctx;
    }
    for (int s = 0; s < 256; s++) {
        MAG[s] = (uint8_t)(s < 128 ? s : 256 - s);
        MAG2[s] = (uint16_t)(2 * MAG[s]);
    }
}

/* The activity of each sample of a row (its context is ACT_CTX[act]), from the magnitudes of the row above (mu)
   and of this row, which it writes to mc: they are the next row's mu. Both rows of magnitudes are padded with a
   zero on both ends (set once by the caller), so neither loop needs a branch and both vectorise; the table
   lookup is left to the caller's histogram loop, which reads each sample anyway. The decoder computes the same
   contexts sample by sample, as it learns the row. */
static void row_activity(const uint8_t *row, uint8_t centre, Py_ssize_t w, const uint8_t *mu /* w + 2 */,
                         uint8_t *mc /* w + 2 */, uint16_t *act /* w */) {
    for (Py_ssize_t x = 0; x < w; x++) { /* |int8| as a byte: 0x80 stays 128 */
        int8_t c = (int8_t)(uint8_t)(row[x] - centre);
        mc[x + 1] = (uint8_t)(c < 0 ? -c : c);
    }
    for (Py_ssize_t x = 0; x < w; x++) act[x] = (uint16_t)(2 * mu[x + 1] + mu[x] + mu[x + 2] + 2 * mc[x]);
}

/* ------------------------------------------------------------------------------------------------ tables */

/* Scale counts to frequencies summing to PROB_SCALE; every symbol that occurs keeps at least 1. */
static void normalise(const uint32_t *count, uint64_t total, uint32_t *freq) {
    int64_t sum = 0;
    int best = 0;
    for (int s = 0; s < 256; s++) {
        if (count[s] == 0) {
            freq[s] = 0;
            continue;
        }
        uint64_t f = ((uint64_t)count[s] * PROB_SCALE + total / 2) / total;
        freq[s] = f ? (uint32_t)f : 1;
        sum += freq[s];
        if (count[s] > count[best]) best = s;
    }
    int64_t diff = (int64_t)PROB_SCALE - sum;
    if (diff >= 0) {
        freq[best] += (uint32_t)diff;
        return;
    }
    while (diff < 0) { /* take from the largest frequencies, never below 1 */
        int top = 0;
        for (int s = 1; s < 256; s++)
            if (freq[s] > freq[top]) top = s;
        uint32_t take = (uint32_t)((-diff) < (int64_t)(freq[top] - 1) ? -diff : (int64_t)(freq[top] - 1));
        if (take == 0) take = 1; /* unreachable: fewer than PROB_SCALE symbols occur */
        freq[top] -= take;
        diff += take;
    }
}

static uint8_t *put_varint(uint8_t *p, uint32_t v) {
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* A table is 256 frequencies as LEB128 varints; a zero is followed by one byte: how many more zeros follow. */
static uint8_t *put_table(uint8_t *p, const uint32_t *freq) {
    int s = 0;
    while (s < 256) {
        p = put_varint(p, freq[s]);
        if (freq[s] == 0) {
            int run = 0;
            while (s + 1 + run < 256 && freq[s + 1 + run] == 0 && run < 255) run++;
            *p++ = (uint8_t)run;
            s += run;
        }
        s++;
    }
    return p;
}

typedef struct {
    const uint8_t *p, *end;
    int bad;
} Reader;

static uint32_t get_u8(Reader *r) {
    if (r->p >= r->end) {
        r->bad = 1;
        return 0;
    }
    return *r->p++;
}

static uint32_t get_varint(Reader *r) {
    uint32_t v = 0;
    for (int shift = 0; shift < 21; shift += 7) {
        uint32_t b = get_u8(r);
        v |= (b & 0x7f) << shift;
        if (!(b & 0x80)) return v;
    }
    r->bad = 1; /* longer than any frequency can be */
    return 0;
}

static int get_table(Reader *r, uint32_t *freq) {
    int s = 0;
    uint32_t sum = 0;
    while (s < 256) {
        uint32_t f = get_varint(r);
        if (r->bad || f > PROB_SCALE) return 0;
        freq[s] = f;
        sum += f;
        if (f == 0) {
            uint32_t run = get_u8(r);
            if (r->bad || s + 1 + (int)run > 256) return 0;
            for (uint32_t i = 0; i < run; i++) freq[++s] = 0;
        }
        s++;
    }
    return sum == PROB_SCALE;
}

/* -------------------------------------------------------------------------------------------------- rANS */

typedef struct {
    uint32_t x_max, rcp_freq, bias;
    uint16_t cmpl_freq, rcp_shift; /* rcp_shift counts the 32 bits of the product's high word too */
} EncSym;

/* ryg's rans_byte symbol setup: division by the frequency becomes a multiply by its reciprocal. The quotient is
   the 64-bit product shifted once (by 32 + ryg's shift): one step less on each state's dependency chain, which
   is what pass 2's speed is bound by (measured on AMD EPYC: 5 % of the plane's encode time). */
static void enc_sym_init(EncSym *e, uint32_t start, uint32_t freq) {
    e->x_max = ((RANS_L >> PROB_BITS) << 8) * freq;
    e->cmpl_freq = (uint16_t)(PROB_SCALE - freq);
    if (freq < 2) {
        e->rcp_freq = ~0u;
        e->rcp_shift = 32;
        e->bias = start + PROB_SCALE - 1;
    } else {
        const uint32_t shift = 32u - (uint32_t)__builtin_clz(freq - 1); /* the least with 2^shift >= freq */
        e->rcp_freq = (uint32_t)(((1ull << (shift + 31)) + freq - 1) / freq);
        e->rcp_shift = (uint16_t)(shift + 31);
        e->bias = start;
    }
}

/* One symbol into one state. The state stays in [RANS_L, 256·RANS_L), so renormalising writes at most two
   bytes (PROB_BITS ≤ 15): both are stored and the pointer moves by how many count, without a branch. */
static inline uint32_t enc_put(uint32_t x, uint8_t **pptr, const EncSym *e) {
    uint8_t *ptr = *pptr;
    uint32_t one = x >= e->x_max;
    uint32_t two = (x >> 8) >= e->x_max; /* x >= 256 x_max, in 32 bits */
    uint32_t k = one + two;
    ptr[-1] = (uint8_t)x;
    ptr[-2] = (uint8_t)(x >> 8);
    *pptr = ptr - k;
    x = (uint32_t)((uint64_t)x >> (8 * k));
    uint32_t q = (uint32_t)(((uint64_t)x * e->rcp_freq) >> e->rcp_shift);
    return x + e->bias + q * e->cmpl_freq;
}

/* --------------------------------------------------------------------------------------- plane encoding */

/* Plane modes (docs/wire-format.md). A plane's tables byte holds K, its number of context tables, and how its
   samples are grouped. Group planes (version 4, what this encoder writes): each row is cut into groups of GROUP
   samples, and a flag event (0: every sample of the group is symbol 0; 1: they are coded) comes before each
   group, in the context of the flags to its left and above; only flagged groups code their samples. Static
   regions and the zeros of a residual then cost one cheap event a group instead of one a sample, which is what
   makes coding them fast. Run planes and planes without runs (versions 2 and 3) are only decoded. */
#define GROUP 16
#define FLAG_CONTEXTS 4 /* left flag + 2 × upper flag */
#define GROUPS 0x40   /* in a plane's tables byte: a group plane */
#define NO_RUNS 0x80  /* in a plane's tables byte (versions 2-3): no run table, no run events */
#define RUN_MAX 255   /* versions 2-3: the run symbol that means "up to 255 zeros or to the row end" */

static inline uint64_t load8(const uint8_t *p) {
    uint64_t word;
    memcpy(&word, p, 8);
    return word;
}

/* How many bytes from p on equal v, at most limit: eight at a time where the byte order allows. */
static inline Py_ssize_t same_bytes(const uint8_t *p, uint8_t v, Py_ssize_t limit) {
    Py_ssize_t r = 0;
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const uint64_t pattern = 0x0101010101010101ull * v;
    for (; r + 16 <= limit; r += 16) {
        const uint64_t a = load8(p + r) ^ pattern, b = load8(p + r + 8) ^ pattern;
        if (a | b) return r + (a ? __builtin_ctzll(a) >> 3 : 8 + (__builtin_ctzll(b) >> 3));
    }
    for (; r + 8 <= limit; r += 8) {
        const uint64_t word = load8(p + r);
        if (word != pattern) return r + (__builtin_ctzll(word ^ pattern) >> 3);
    }
#endif
    while (r < limit && p[r] == v) r++;
    return r;
}

/* How one plane's symbols are grouped into tables: contexts (ordered by activity) share a table until it has
   MIN_TABLE_SAMPLES samples, so a table's cost is always small beside what it codes, and a short last group
   joins the one before it. cost estimates the coded plane in bits: its header, the tables as written plus each
   symbol's code length under its table. */
typedef struct {
    uint8_t map[NCTX];
    uint64_t total[NCTX];
    int ntables;
    double cost;
    uint32_t freq[NCTX][256]; /* each table's frequencies, as written */
} Plan;

static void plan_tables(const uint32_t *hist, Plan *plan) {
    memset(plan, 0, sizeof *plan);
    uint64_t open_total = 0;
    for (int c = 0; c < NCTX; c++) {
        uint64_t count = 0;
        for (int s = 0; s < 256; s++) count += hist[c * 256 + s];
        plan->map[c] = (uint8_t)plan->ntables;
        open_total += count;
        if (open_total >= MIN_TABLE_SAMPLES) {
            plan->total[plan->ntables++] = open_total;
            open_total = 0;
        }
    }
    if (plan->ntables == 0)
        plan->total[plan->ntables++] = open_total;
    else
        plan->total[plan->ntables - 1] += open_total;
    for (int c = 0; c < NCTX; c++)
        if (plan->map[c] >= plan->ntables) plan->map[c] = (uint8_t)(plan->ntables - 1);
    /* Each table's counts in one pass over the contexts, then its frequencies and what it costs. */
    uint32_t counts[NCTX][256];
    memset(counts, 0, sizeof(uint32_t) * 256 * (size_t)plan->ntables);
    for (int c = 0; c < NCTX; c++) {
        uint32_t *count = counts[plan->map[c]];
        const uint32_t *h = hist + c * 256;
        for (int s = 0; s < 256; s++) count[s] += h[s];
    }
    uint8_t scratch[256 * 3 + 256];
    double bits = 8.0 * (2 + NCTX + 4 + 4 * NSTATES);
    for (int t = 0; t < plan->ntables; t++) {
        uint32_t *freq = plan->freq[t];
        if (plan->total[t] == 0) { /* an unused table still needs to be a valid one */
            const uint32_t one[256] = {1};
            normalise(one, 1, freq);
        } else {
            normalise(counts[t], plan->total[t], freq);
        }
        bits += 8.0 * (double)(put_table(scratch, freq) - scratch);
        for (int s = 0; s < 256; s++)
            if (counts[t][s]) bits += counts[t][s] * (PROB_BITS - log2((double)freq[s]));
    }
    plan->cost = bits;
}

/* --------------------------------------------------------------------------------------- plane threads */

/* A record's planes are coded each on its own (their bytes one after the other), and a large plane's bands
   (below) each on its own too, so where the caller allows more than one thread, several planes or bands are
   coded, costed or decoded at once: the same bytes either way. Only planes of PARALLEL_MIN_SAMPLES or more:
   starting a thread costs tens of microseconds. Why: at 1080p the coder is 70 % of a frame's encode time (a
   Raspberry Pi 4 has four cores); the collector's decode is one dependency chain a sample, which only more
   cores shorten. */
#define PARALLEL_MIN_SAMPLES (1 << 17)
#define MAX_THREADS 4 /* a record has at most 4 planes, a plane at most MAX_BANDS bands */

typedef struct {
    void (*job)(void *ctx, Py_ssize_t index);
    void *ctx;
    Py_ssize_t jobs;
    Py_ssize_t next; /* the next job to take, shared (atomic) */
} Team;

static void *team_work(void *arg) {
    Team *team = arg;
    for (;;) {
        const Py_ssize_t i = __atomic_fetch_add(&team->next, 1, __ATOMIC_RELAXED);
        if (i >= team->jobs) return NULL;
        team->job(team->ctx, i);
    }
}

/* Runs job(ctx, 0 .. jobs - 1), on up to threads threads (this one among them); each job once. A thread that
   cannot be started leaves its share to the others. */
static void run_team(void (*job)(void *, Py_ssize_t), void *ctx, Py_ssize_t jobs, int threads) {
    Team team = {job, ctx, jobs, 0};
    pthread_t helpers[MAX_THREADS];
    int started = 0;
    if (threads > jobs) threads = (int)jobs;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    for (int t = 1; t < threads; t++)
        if (pthread_create(&helpers[started], NULL, team_work, &team) == 0) started++;
    team_work(&team);
    for (int t = 0; t < started; t++) pthread_join(helpers[t], NULL);
}

/* Threads for a record's planes: several only for more than one large plane (one plane's bands are its own). */
static int use_threads(int threads, Py_ssize_t channels, Py_ssize_t n) {
    return channels > 1 && n >= PARALLEL_MIN_SAMPLES ? threads : 1;
}

/* ------------------------------------------------------------------------------------------------ bands */

/* Banded planes (version 8): a group plane of 2 BAND_SAMPLES or more is cut into bands of whole rows, each
   coded as if it were a plane of its own (contexts and flags start afresh at its first row, its own four states
   and length) with the plane's one set of tables. Why: a decoded video's picture is one plane, so coding planes
   at once did nothing for the RTSP cameras; bands give a 1080p picture four jobs, encoded and (without MED)
   decoded at once. The bands are the same whatever the threads, so the bytes are too. Cost: 20 bytes a band (its
   length and states), the count's byte and a row of poorer contexts a band. */
#define BAND_SAMPLES (1 << 18) /* a band has at least this many samples */
#define MAX_BANDS 4
#define BANDED (GROUPS | NO_RUNS) /* in a plane's tables byte, from version 8: a banded group plane */

static int band_count(Py_ssize_t h, Py_ssize_t w) {
    const size_t bands = (size_t)h * (size_t)w / BAND_SAMPLES;
    return bands < 2 ? 1 : (bands > MAX_BANDS ? MAX_BANDS : (int)bands);
}

/* Band b's first row (band b covers rows band_row(b) .. band_row(b + 1) - 1). */
static Py_ssize_t band_row(Py_ssize_t h, int bands, int b) { return (Py_ssize_t)((int64_t)h * b / bands); }

/* ------------------------------------------------------------------------------------- plane encoding */

/* Room one plane needs in the output: its header and tables (16 of at most 3 bytes a symbol, 4 of 3 bytes) and
   its bands' count and lengths are written before the encoder knows whether the plane will be stored (n + 2
   bytes) or coded (less). */
static size_t plane_bound(size_t n) {
    return n + 2 + 2 + NCTX + (size_t)NCTX * 256 * 3 + FLAG_CONTEXTS * 3 + 1 + 4 * MAX_BANDS;
}

/* Whether any of a whole group's GROUP samples differs from the centre (centre8: it in every byte). */
static inline int group_moves(const uint8_t *p, uint64_t centre8) {
    uint64_t any = 0;
    for (int i = 0; i < GROUP; i += 8) any |= load8(p + i) ^ centre8;
    return any != 0;
}

/* A plane is coded in two passes, each band on its own. Pass 1 finds every group's flag and, in flagged groups,
   every sample's context, counts both, and (when coding) lists every event in decoding order as its context
   times 256 plus its symbol: the 16 bits both passes index by (the histogram cell, the coder's symbol). The
   bands' counts make the plane's tables. Pass 2 codes a band's list, last event first, in one loop: its event
   k uses its state k mod NSTATES. Costing runs pass 1 only, without the list. */
#define EVENT_CONTEXTS (NCTX + FLAG_CONTEXTS) /* a sample's activity context, then each flag context */
#define CHECK_EVENTS 4096 /* pass 2 looks this often whether the plane is to be stored instead */

typedef struct {
    Py_ssize_t y0, y1;   /* its rows */
    size_t first;        /* its events are ev[first .. first + events - 1] */
    size_t events;
    uint32_t *hist;      /* pass 1: NCTX × 256 cells, counted in four histograms in turn, summed into the first */
    uint32_t flag_hist[FLAG_CONTEXTS][2];
    uint8_t *buf;        /* pass 2's room */
    const uint8_t *coded; /* pass 2: its len coded bytes (states first), at buf's end */
    size_t len;
    int grew;            /* pass 2 stopped: the plane, unbanded, codes to more than its samples (it is stored) */
    int failed;          /* no memory */
} Band;

typedef struct {
    const uint8_t *plane;
    Py_ssize_t w, ng; /* ng: groups a row */
    int bands;
    uint8_t centre;
    uint16_t *ev;     /* NULL when costing */
    EncSym *ctxenc;   /* pass 2: each event's coder entry, at its 16 bits */
    Band band[MAX_BANDS];
} PlaneCoder;

static inline __attribute__((always_inline)) void pass1_with(PlaneCoder *pc, Band *bd, const int coding) {
    const Py_ssize_t w = pc->w, ng = pc->ng, rows = bd->y1 - bd->y0;
    const uint8_t centre = pc->centre;
    const uint64_t centre8 = 0x0101010101010101ull * centre;
    uint8_t *flags = calloc((size_t)(rows + 1) * (size_t)ng, 1); /* a row of zeros above the first */
    uint8_t *mags = calloc((size_t)(2 * (w + 2)), 1);
    uint16_t *act = malloc(sizeof(uint16_t) * (size_t)w);
    uint32_t *hist = bd->hist = calloc(4 * NCTX * 256, sizeof(uint32_t));
    uint16_t *ev = coding ? pc->ev + bd->first : NULL;
    if (!flags || !mags || !act || !hist) {
        bd->failed = 1;
        goto done;
    }
    uint32_t *split[3] = {hist + NCTX * 256, hist + 2 * NCTX * 256, hist + 3 * NCTX * 256};
    size_t events = 0;
    int above_quiet = 1; /* the row above is all centre (above the first row, everything reads as centre) */
    /* Magnitudes of the row above (zeros above the first row and after a quiet row) and of this row. */
    uint8_t *mu = mags, *mc = mags + w + 2;
    for (Py_ssize_t y = bd->y0; y < bd->y1; y++) {
        const uint8_t *row = pc->plane + y * w;
        const uint8_t *up = flags + (size_t)(y - bd->y0) * (size_t)ng; /* the row above's flags */
        uint8_t *frow = flags + (size_t)(y - bd->y0 + 1) * (size_t)ng;
        if (same_bytes(row, centre, w) == w) {
            /* A quiet row (most of a static scene): every flag 0, in the context of the flag above. */
            uint32_t ups = 0;
            for (Py_ssize_t g = 0; g < ng; g++) ups += up[g];
            bd->flag_hist[0][0] += (uint32_t)ng - ups;
            bd->flag_hist[2][0] += ups;
            if (coding)
                for (Py_ssize_t g = 0; g < ng; g++) ev[events + (size_t)g] = (uint16_t)((NCTX + 2 * up[g]) << 8);
            events += (size_t)ng;
            if (!above_quiet) memset(mu, 0, (size_t)(w + 2)); /* this row's magnitudes, for the next */
            above_quiet = 1;
            continue;
        }
        above_quiet = 0;
        row_activity(row, centre, w, mu, mc, act);
        uint8_t *swap = mu;
        mu = mc;
        mc = swap;
        int left = 0;
        for (Py_ssize_t g = 0; g < ng; g++) {
            const Py_ssize_t x0 = g * GROUP, x1 = x0 + GROUP < w ? x0 + GROUP : w;
            const int flag = x1 - x0 == GROUP ? group_moves(row + x0, centre8)
                                              : same_bytes(row + x0, centre, x1 - x0) != x1 - x0;
            frow[g] = (uint8_t)flag;
            const int fc = left + 2 * up[g];
            bd->flag_hist[fc][flag]++;
            if (coding) ev[events] = (uint16_t)(((NCTX + fc) << 8) | flag);
            events++;
            left = flag;
            if (!flag) continue;
            /* Each sample's context times 256 plus its symbol: its histogram cell and its event. The cells are
               counted in four histograms in turn: repeated increments of one cell stall. */
            uint16_t *e = ev + events;
            Py_ssize_t x = x0;
            for (; x + 3 < x1; x += 4, e += 4) {
                const uint16_t v0 = (uint16_t)(ACT_CTX[act[x]] << 8 | (uint8_t)(row[x] - centre));
                const uint16_t v1 = (uint16_t)(ACT_CTX[act[x + 1]] << 8 | (uint8_t)(row[x + 1] - centre));
                const uint16_t v2 = (uint16_t)(ACT_CTX[act[x + 2]] << 8 | (uint8_t)(row[x + 2] - centre));
                const uint16_t v3 = (uint16_t)(ACT_CTX[act[x + 3]] << 8 | (uint8_t)(row[x + 3] - centre));
                if (coding) {
                    e[0] = v0;
                    e[1] = v1;
                    e[2] = v2;
                    e[3] = v3;
                }
                hist[v0]++;
                split[0][v1]++;
                split[1][v2]++;
                split[2][v3]++;
            }
            for (; x < x1; x++, e++) {
                const uint16_t v = (uint16_t)(ACT_CTX[act[x]] << 8 | (uint8_t)(row[x] - centre));
                if (coding) *e = v;
                hist[v]++;
            }
            events += (size_t)(x1 - x0);
        }
    }
    for (int k = 0; k < NCTX * 256; k++) hist[k] += split[0][k] + split[1][k] + split[2][k];
    bd->events = events;
done:
    free(flags);
    free(mags);
    free(act);
}

static void pass1_coding(void *ctx, Py_ssize_t b) {
    PlaneCoder *pc = ctx;
    pass1_with(pc, &pc->band[b], 1);
}

static void pass1_costing(void *ctx, Py_ssize_t b) {
    PlaneCoder *pc = ctx;
    pass1_with(pc, &pc->band[b], 0);
}

/* Codes events (ev[0 .. events - 1]) last first into buf's end; returns how many bytes, states first, start at
   *coded, or 0 once more than limit are written (it looks every CHECK_EVENTS events, so buf holds limit bytes
   and what those events add: two bytes an event at most). */
static size_t code_events(const uint16_t *ev, size_t events, const EncSym *ctxenc, uint8_t *buf, size_t buf_size,
                          size_t limit, const uint8_t **coded) {
    uint8_t *end = buf + buf_size, *ptr = end;
    uint32_t st[NSTATES] = {RANS_L, RANS_L, RANS_L, RANS_L};
#define EVENT_SYM(v) (ctxenc + (v))
    size_t k = events;
    while (k % NSTATES) {
        k--;
        st[k % NSTATES] = enc_put(st[k % NSTATES], &ptr, EVENT_SYM(ev[k]));
    }
    size_t check = k > CHECK_EVENTS ? k - CHECK_EVENTS : 0;
    while (k >= NSTATES) { /* k is a multiple of NSTATES: events k-1 .. k-4 use states 3 .. 0 */
        k -= NSTATES;
        st[3] = enc_put(st[3], &ptr, EVENT_SYM(ev[k + 3]));
        st[2] = enc_put(st[2], &ptr, EVENT_SYM(ev[k + 2]));
        st[1] = enc_put(st[1], &ptr, EVENT_SYM(ev[k + 1]));
        st[0] = enc_put(st[0], &ptr, EVENT_SYM(ev[k]));
        if (k <= check) {
            if ((size_t)(end - ptr) > limit) return 0;
            check = k > CHECK_EVENTS ? k - CHECK_EVENTS : 0;
        }
    }
#undef EVENT_SYM
    for (int s = NSTATES - 1; s >= 0; s--) {
        ptr -= 4;
        ptr[0] = (uint8_t)st[s];
        ptr[1] = (uint8_t)(st[s] >> 8);
        ptr[2] = (uint8_t)(st[s] >> 16);
        ptr[3] = (uint8_t)(st[s] >> 24);
    }
    *coded = ptr;
    return (size_t)(end - ptr);
}

/* Pass 2 of one band. An unbanded plane that codes to more bytes than it has samples is stored, so its coding
   stops there, in room for that many; a band that does is finished in room for all its events can write,
   since the other bands may still make the plane smaller than stored (a band of noise under calm ones). */
static void pass2(void *ctx, Py_ssize_t b) {
    PlaneCoder *pc = ctx;
    Band *bd = &pc->band[b];
    const size_t n = (size_t)(bd->y1 - bd->y0) * (size_t)pc->w;
    const uint16_t *ev = pc->ev + bd->first;
    size_t buf_size = n + 2 * (CHECK_EVENTS + 2 * NSTATES) + 4 * NSTATES + 16;
    bd->buf = malloc(buf_size);
    if (bd->buf) bd->len = code_events(ev, bd->events, pc->ctxenc, bd->buf, buf_size, n, &bd->coded);
    if (bd->buf && (bd->len || pc->bands == 1)) {
        bd->grew = !bd->len;
        return;
    }
    free(bd->buf);
    buf_size = 2 * bd->events + 4 * NSTATES + 16;
    bd->buf = malloc(buf_size);
    if (bd->buf) bd->len = code_events(ev, bd->events, pc->ctxenc, bd->buf, buf_size, SIZE_MAX, &bd->coded);
    bd->failed = !bd->buf;
}

static uint8_t *put_u32(uint8_t *p, size_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
    return p + 4;
}

/* Runs job on every band, on up to threads threads. */
static void each_band(void (*job)(void *, Py_ssize_t), PlaneCoder *pc, int bands, int threads) {
    if (threads > 1 && bands > 1)
        run_team(job, pc, bands, threads);
    else
        for (int b = 0; b < bands; b++) job(pc, b);
}

/* Codes one plane into out (at least plane_bound(n) bytes) as a group plane, banded when it is large enough;
   returns the bytes written, 0 on no memory. With cost set, only pass 1 runs, and *cost is the size in bytes
   the plane would code to (the encoder's recipe estimates: within a few bytes, at half the time); the return
   value is then 1, or 0 on no memory. threads: its bands coded at once on up to this many. */
static size_t encode_plane(const uint8_t *plane, Py_ssize_t h, Py_ssize_t w, uint8_t *out, double *cost,
                           int threads) {
    const int coding = cost == NULL;
    const size_t n = (size_t)h * (size_t)w;
    const Py_ssize_t ng = (w + GROUP - 1) / GROUP;
    const int bands = band_count(h, w);
    PlaneCoder pc = {.plane = plane, .w = w, .ng = ng, .bands = bands};
    for (int b = 0; b < bands; b++) {
        Band *bd = &pc.band[b];
        bd->y0 = band_row(h, bands, b);
        bd->y1 = band_row(h, bands, b + 1);
        bd->first = (size_t)bd->y0 * (size_t)(w + ng); /* a row has at most w + ng events */
    }
    size_t written = 0;
    if (coding) {
        pc.ev = malloc(sizeof(uint16_t) * (n + (size_t)h * (size_t)ng));
        pc.ctxenc = malloc(sizeof(EncSym) * EVENT_CONTEXTS * 256);
        if (!pc.ev || !pc.ctxenc) goto done;
    }

    /* The centre is the commonest value (in a sample of rows: any centre decodes right): symbols are values
       minus the centre, so residual planes centred on 0 and chroma residuals centred on 128 both put their
       peak at symbol 0. Every 32nd row (not every 8th: the same centre on every plane of the public sets)
       spares 5-7 % of a plane's encode time. */
    Py_ssize_t centre_step = h / CENTRE_ROWS;
    centre_step = centre_step < 1 ? 1 : (centre_step > CENTRE_ROW_STEP ? CENTRE_ROW_STEP : centre_step);
    uint32_t global[4][256] = {{0}};
    for (Py_ssize_t y = 0; y < h; y += centre_step) {
        const uint8_t *row = plane + y * w;
        Py_ssize_t x = 0;
        for (; x + 3 < w; x += 4) {
            global[0][row[x]]++;
            global[1][row[x + 1]]++;
            global[2][row[x + 2]]++;
            global[3][row[x + 3]]++;
        }
        for (; x < w; x++) global[0][row[x]]++;
    }
    for (int v = 0; v < 256; v++) global[0][v] += global[1][v] + global[2][v] + global[3][v];
    int best = 0;
    for (int v = 1; v < 256; v++)
        if (global[0][v] > global[0][best]) best = v;
    pc.centre = (uint8_t)best;

    each_band(coding ? pass1_coding : pass1_costing, &pc, bands, threads);
    for (int b = 0; b < bands; b++)
        if (pc.band[b].failed) goto done;
    uint32_t *hist = pc.band[0].hist;
    uint32_t flag_hist[FLAG_CONTEXTS][2];
    memcpy(flag_hist, pc.band[0].flag_hist, sizeof flag_hist);
    for (int b = 1; b < bands; b++) {
        for (int k = 0; k < NCTX * 256; k++) hist[k] += pc.band[b].hist[k];
        for (int c = 0; c < FLAG_CONTEXTS; c++) {
            flag_hist[c][0] += pc.band[b].flag_hist[c][0];
            flag_hist[c][1] += pc.band[b].flag_hist[c][1];
        }
    }
    Plan plan;
    plan_tables(hist, &plan);
    /* The flag tables, after the context tables: two symbols each, written as the frequency of 0 alone (an
       unused one still a valid table). */
    uint32_t flag_freq[FLAG_CONTEXTS][256];
    double bits = plan.cost;
    if (bands > 1) bits += 8.0 * (1 + (bands - 1) * (4 + 4 * NSTATES)); /* the count, each band's length and states */
    uint8_t scratch[4];
    for (int c = 0; c < FLAG_CONTEXTS; c++) {
        uint32_t count[256] = {0};
        count[0] = flag_hist[c][0];
        count[1] = flag_hist[c][1];
        const uint64_t total = (uint64_t)count[0] + count[1];
        if (total == 0) count[0] = 1;
        normalise(count, total ? total : 1, flag_freq[c]);
        bits += 8.0 * (double)(put_varint(scratch, flag_freq[c][0]) - scratch);
        for (int f = 0; f < 2; f++)
            if (flag_hist[c][f]) bits += flag_hist[c][f] * (PROB_BITS - log2((double)flag_freq[c][f]));
    }
    if (!coding) {
        const double bytes = bits / 8.0;
        *cost = bytes < (double)(n + 2) ? bytes : (double)(n + 2);
        written = 1;
        goto done;
    }

    uint8_t *p = out;
    *p++ = pc.centre;
    *p++ = (uint8_t)(plan.ntables | (bands > 1 ? BANDED : GROUPS));
    memcpy(p, plan.map, NCTX);
    p += NCTX;
    for (int t = 0; t < plan.ntables; t++) p = put_table(p, plan.freq[t]);
    for (int c = 0; c < FLAG_CONTEXTS; c++) p = put_varint(p, flag_freq[c][0]);
    /* Each context gets its own copy of its table's coder entries, so that an event's value is its entry's
       index: one load and one shift less an event than finding the context's table first (pass 2 10-15 %
       faster). Contexts that share a table are adjacent (plan_tables); the flag contexts have one each. */
    for (int c = 0; c < EVENT_CONTEXTS; c++) {
        EncSym *entries = &pc.ctxenc[c * 256];
        if (c > 0 && c < NCTX && plan.map[c] == plan.map[c - 1]) {
            memcpy(entries, entries - 256, sizeof(EncSym) * 256);
            continue;
        }
        const uint32_t *freq = c < NCTX ? plan.freq[plan.map[c]] : flag_freq[c - NCTX];
        uint32_t start = 0;
        for (int s = 0; s < 256; s++) {
            /* Only symbols the table gives a frequency are ever coded (every symbol that occurs has one). */
            if (freq[s])
                enc_sym_init(&entries[s], start, freq[s]);
            else
                memset(&entries[s], 0, sizeof(EncSym));
            start += freq[s];
        }
    }

    each_band(pass2, &pc, bands, threads);
    size_t size = (size_t)(p - out) + (bands > 1);
    int grew = 0;
    for (int b = 0; b < bands; b++) {
        if (pc.band[b].failed) goto done;
        grew |= pc.band[b].grew;
        size += 4 + pc.band[b].len;
    }
    if (grew || size >= n + 2) { /* noise: stored is smaller, and bounds the output at n + 2 */
        out[0] = 0;
        out[1] = 0;
        memcpy(out + 2, plane, n);
        written = n + 2;
        goto done;
    }
    if (bands > 1) *p++ = (uint8_t)bands;
    for (int b = 0; b < bands; b++) {
        const Band *bd = &pc.band[b];
        p = put_u32(p, bd->len);
        memcpy(p, bd->coded, bd->len);
        p += bd->len;
    }
    written = (size_t)(p - out);
done:
    for (int b = 0; b < bands; b++) {
        free(pc.band[b].hist);
        free(pc.band[b].buf);
    }
    free(pc.ev);
    free(pc.ctxenc);
    return written;
}

/* Which symbol a slot (0 .. PROB_SCALE - 1) belongs to is looked up in two steps: a table of one entry for each
   BUCKET_SLOTS slots gives the symbol at the bucket's first slot, marked BUCKET_ONE where the whole bucket is
   that symbol's (most slots: a residual's common symbols span many buckets); otherwise the symbols after it are
   stepped through. A byte for every slot was 16 kB a table, and a plane's tables 200-300 kB: every lookup went
   to the L2 cache, on the decoder's one dependency chain (symbol -> context -> table -> symbol); buckets of 32
   slots are 1 kB a table and stay in L1. Measured against the byte table on the encoder's own payloads (the
   same output, benchmarks/ctx_timing.py-style builds side by side): the coder's decoding 1.11-1.14x faster on
   the 1080p stills and the three videos (buckets of 16 or 64 slots: 1.03-1.12x), 1.14-1.17x with mag2 below,
   1.17-1.20x with decode_plane's pointer tables too. */
#define BUCKET_BITS 5
#define BUCKET_SLOTS (1u << BUCKET_BITS)
#define BUCKETS (PROB_SCALE >> BUCKET_BITS)
#define BUCKET_ONE 0x100

/* The buckets of one table from its symbols' (freq << 16 | start), whose frequencies sum to PROB_SCALE. */
static void fill_buckets(const uint32_t *fstart, uint16_t *bucket) {
    int s = 0;
    for (uint32_t b = 0; b < BUCKETS; b++) {
        const uint32_t first = b << BUCKET_BITS, last = first + BUCKET_SLOTS - 1;
        while ((fstart[s] & 0xffff) + (fstart[s] >> 16) <= first) s++;
        const int one = (fstart[s] & 0xffff) + (fstart[s] >> 16) > last;
        bucket[b] = (uint16_t)(s | (one ? BUCKET_ONE : 0));
    }
}

/* 2 |int8(s)|, the left neighbour's share of the next sample's activity, computed: one load (MAG2) less on the
   decoder's dependency chain. */
static inline uint32_t mag2(uint32_t s) {
    const int v = (int8_t)s;
    return (uint32_t)(2 * (v < 0 ? -v : v));
}

/* One rANS decoding step with a table's buckets and (freq << 16 | start); returns the symbol, or -1 when the
   coded bytes run out. */
static inline int dec_get(uint32_t *state, const uint8_t **pptr, const uint8_t *end, const uint16_t *bucket,
                          const uint32_t *fstart) {
    uint32_t xs = *state, slot = xs & (PROB_SCALE - 1);
    const uint32_t entry = bucket[slot >> BUCKET_BITS];
    uint32_t s = entry & 0xff;
    uint32_t fs = fstart[s];
    if (!(entry & BUCKET_ONE))
        while (slot >= (fs & 0xffff) + (fs >> 16)) fs = fstart[++s]; /* ends: the frequencies sum to PROB_SCALE */
    xs = (fs >> 16) * (xs >> PROB_BITS) + slot - (fs & 0xffff);
    while (xs < RANS_L) {
        if (*pptr >= end) return -1;
        xs = (xs << 8) | *(*pptr)++;
    }
    *state = xs;
    return s;
}

/* The inverse MED step (the MED section below defines the stage): the value at a sample from its residual e, its
   left neighbour a (reconstructed, XOR flip), and above it b and above-left c (likewise); returns it XOR flip, the
   next sample's a. */
static inline int med_undo(int e, int a, int b, int c) {
    const int lo = a < b ? a : b, hi = a < b ? b : a;
    int p = a + b - c;
    p = p < lo ? lo : (p > hi ? hi : p);
    return (e + p) & 0xff;
}

/* MED undone in place over one row of residuals; up is the row above, reconstructed, or NULL for the first. */
static void med_undo_row(uint8_t *row, const uint8_t *up, Py_ssize_t w, int flip) {
    int a = 0, c = 0;
    for (Py_ssize_t x = 0; x < w; x++) {
        const int b = up ? up[x] ^ flip : 0;
        a = med_undo(row[x], a, b, c);
        c = b;
        row[x] = (uint8_t)(a ^ flip);
    }
}

/* MED undone in place over a whole plane of residuals (a stored plane). */
static void med_undo_plane(uint8_t *plane, Py_ssize_t h, Py_ssize_t w, int flip) {
    for (Py_ssize_t y = 0; y < h; y++) med_undo_row(plane + y * w, y ? plane + (y - 1) * w : NULL, w, flip);
}


/* A plane's tables as the decoder looks them up, shared (read only) by its bands. */
typedef struct {
    uint32_t ntables;
    int grouped, runs;
    uint8_t centre;
    int med; /* 1 + MED's flip, or 0 */
    uint32_t (*fstart)[256]; /* freq << 16 | start */
    uint16_t (*lut)[BUCKETS];
    /* Each activity's table, as the pointers the lookups use: one load on the chain instead of a table number
       and the address arithmetic after it (1.13 -> 1.20x with the buckets, measured as above). */
    const uint16_t *bucket_of[MAX_ACT + 1];
    const uint32_t *fstart_of[MAX_ACT + 1];
} DecTables;

/* Decodes rows y0 .. y1 - 1 of a plane (all of it, or one band) from its coded samples ptr .. end: four states,
   then renormalisation bytes. Contexts and flags start afresh at y0. Returns NULL or what is wrong. */
static const char *decode_rows(const DecTables *t, uint8_t *plane, Py_ssize_t w, Py_ssize_t y0, Py_ssize_t y1,
                               const uint8_t *ptr, const uint8_t *end) {
    uint8_t *rows = malloc((size_t)(w + 3) + sizeof(uint16_t) * (size_t)w);
    uint8_t *up_flags = calloc((size_t)((w + GROUP - 1) / GROUP), 1); /* the row above's, 0 above the first */
    const char *err = NULL;
    if (!rows || !up_flags) {
        err = "no memory";
        goto done;
    }
    uint32_t st[NSTATES];
    for (int k = 0; k < NSTATES; k++) {
        st[k] = (uint32_t)ptr[0] | (uint32_t)ptr[1] << 8 | (uint32_t)ptr[2] << 16 | (uint32_t)ptr[3] << 24;
        ptr += 4;
        if (st[k] < RANS_L) {
            err = "CTX stage has an invalid coder state";
            goto done;
        }
    }
    /* The sample loop is one dependency chain (symbol → magnitude → context → table → symbol), so
       everything it looks up is folded into as few loads as possible. */
    const uint32_t ntables = t->ntables, all = ntables + (t->grouped ? FLAG_CONTEXTS : (uint32_t)t->runs);
    const int grouped = t->grouped, runs = t->runs, med = t->med;
    const uint8_t centre = t->centre;
    uint16_t(*lut)[BUCKETS] = t->lut;
    uint32_t(*fstart)[256] = t->fstart;
    const uint16_t *const *bucket_of = t->bucket_of;
    const uint32_t *const *fstart_of = t->fstart_of;
    const uint16_t *run_lut = lut[all - 1];
    const uint32_t *run_fstart = fstart[all - 1];
    uint8_t *upper = rows;
    uint16_t *part = (uint16_t *)(rows + w + 2 + (w & 1));
    memset(upper, 0, (size_t)(w + 2));
    size_t event = 0;
    const int fused = grouped && med; /* MED undone sample by sample in the group loop */
    const int flip = med ? med - 1 : 0;
    for (Py_ssize_t y = y0; y < y1; y++) {
        uint8_t *orow = plane + y * w;
        const uint8_t *prow = plane + (y - 1) * w; /* the row above, reconstructed (read only when y > 0) */
        for (Py_ssize_t x = 0; x < w; x++)
            part[x] = (uint16_t)(2 * upper[x + 1] + upper[x] + upper[x + 2]);
        uint32_t left2 = 0; /* 2 × the left neighbour's magnitude */
        int after_run = !runs; /* without runs every event is a sample event */
        Py_ssize_t x = 0;
        if (grouped) {
            int left_flag = 0, a = 0, c = 0; /* fused: MED's left and above-left neighbours, XOR flip */
            for (Py_ssize_t g = 0; x < w; g++) {
                const Py_ssize_t stop = x + GROUP < w ? x + GROUP : w;
                const uint32_t t = ntables + (uint32_t)(left_flag + 2 * up_flags[g]);
                const int flag = dec_get(&st[event++ % NSTATES], &ptr, end, lut[t], fstart[t]); /* 0 or 1 */
                if (flag < 0) break;
                up_flags[g] = (uint8_t)flag;
                left_flag = flag;
                if (!flag) { /* every symbol of the group is 0: every residual the centre */
                    if (fused) {
                        for (; x < stop; x++) {
                            const int b = y ? prow[x] ^ flip : 0;
                            a = med_undo((int)centre, a, b, c);
                            c = b;
                            orow[x] = (uint8_t)(a ^ flip);
                            upper[x + 1] = 0;
                        }
                    } else {
                        memset(orow + x, 0, (size_t)(stop - x));
                        x = stop;
                    }
                    left2 = 0;
                    continue;
                }
                for (; x < stop; x++) {
                    const uint32_t act = part[x] + left2;
                    const int s = dec_get(&st[event++ % NSTATES], &ptr, end, bucket_of[act], fstart_of[act]);
                    if (s < 0) break;
                    left2 = mag2((uint32_t)s);
                    if (fused) { /* loop-invariant: the compiler keeps two copies of the loop */
                        upper[x + 1] = MAG[s];
                        const int b = y ? prow[x] ^ flip : 0;
                        a = med_undo((int)((s + centre) & 0xff), a, b, c);
                        c = b;
                        orow[x] = (uint8_t)(a ^ flip);
                    } else {
                        orow[x] = (uint8_t)s;
                    }
                }
                if (x < stop) break;
            }
        } else {
            while (x < w) {
                uint32_t act = part[x] + left2;
                int s;
                if (act == 0 && !after_run) {
                    s = dec_get(&st[event++ % NSTATES], &ptr, end, run_lut, run_fstart);
                    if (s < 0) break;
                    Py_ssize_t zeros = s;
                    if (s == RUN_MAX) {
                        zeros = w - x < RUN_MAX ? w - x : RUN_MAX;
                    } else if (s > RUN_MAX || s >= w - x) {
                        err = "CTX stage has a run past the end of its row";
                        goto done;
                    }
                    memset(orow + x, 0, (size_t)zeros);
                    x += zeros;
                    if (zeros) left2 = 0;
                    after_run = s < RUN_MAX;
                    continue;
                }
                s = dec_get(&st[event++ % NSTATES], &ptr, end, bucket_of[act], fstart_of[act]);
                if (s < 0) break;
                orow[x++] = (uint8_t)s;
                left2 = MAG2[s];
                after_run = !runs;
            }
        }
        if (x < w) {
            err = "CTX stage runs out of coded bytes";
            goto done;
        }
        if (fused) continue; /* the row is reconstructed, its magnitudes are the next row's context */
        for (Py_ssize_t i = 0; i < w; i++) {
            orow[i] = (uint8_t)(orow[i] + centre);
            upper[i + 1] = MAG[(uint8_t)(orow[i] - centre)];
        }
        if (med) med_undo_row(orow, y ? prow : NULL, w, flip); /* a plane without groups (versions 2-3) */
    }
    if (ptr != end || st[0] != RANS_L || st[1] != RANS_L || st[2] != RANS_L || st[3] != RANS_L)
        err = "CTX stage does not end where its coder does";
done:
    free(rows);
    free(up_flags);
    return err;
}

/* One band's (or an unbanded plane's) rows and coded samples. */
typedef struct {
    Py_ssize_t y0, y1;
    const uint8_t *p, *end;
    const char *err;
} DecBand;

typedef struct {
    const DecTables *tables;
    uint8_t *plane;
    Py_ssize_t w;
    DecBand band[255];
} DecBands;

static void decode_band(void *ctx, Py_ssize_t b) {
    DecBands *d = ctx;
    DecBand *band = &d->band[b];
    band->err = decode_rows(d->tables, d->plane, d->w, band->y0, band->y1, band->p, band->end);
}

/* Reads a coded-samples length and sets p .. end to that many bytes; 0 if they are not there. */
static int coded_samples(Reader *r, const uint8_t **p, const uint8_t **end) {
    uint32_t len = get_u8(r);
    len |= get_u8(r) << 8;
    len |= get_u8(r) << 16;
    len |= get_u8(r) << 24;
    if (r->bad || len < 4 * NSTATES || (size_t)(r->end - r->p) < len) return 0;
    *p = r->p;
    *end = r->p += len;
    return 1;
}

/* What a coded plane's header says: read alike by decode_plane and by skip_plane (which finds a record's planes
   before they are decoded at once), so that both accept and refuse the same bytes. */
typedef struct {
    uint8_t centre;
    int stored, grouped, banded, runs;
    uint32_t ntables, all; /* K, and how many tables follow: K, then the run table or the four flag tables */
    uint8_t map[NCTX];
} PlaneHead;

/* A plane's centre, tables byte and map; NULL, or what is wrong. A stored plane has only the first two. */
static const char *read_head(Reader *r, int groups_allowed, int bands_allowed, PlaneHead *ph) {
    ph->centre = (uint8_t)get_u8(r);
    uint32_t ntables = get_u8(r);
    if (r->bad) return "CTX stage is truncated in a plane header";
    const int grouped = ph->grouped = groups_allowed && (ntables & GROUPS);
    const int banded = ph->banded = grouped && bands_allowed && (ntables & NO_RUNS);
    if (grouped && !banded && (ntables & NO_RUNS)) return "CTX stage declares a group plane without runs";
    const int runs = ph->runs = !grouped && !(ntables & NO_RUNS);
    ntables &= ~(uint32_t)(NO_RUNS | (grouped ? GROUPS : 0));
    if (ntables == 0 && grouped) return "CTX stage declares a stored group plane";
    if (ntables == 0 && !runs) return "CTX stage declares a stored plane without runs";
    ph->stored = ntables == 0;
    if (ph->stored) return NULL;
    if (ntables > NCTX) return "CTX stage declares an impossible number of tables";
    for (int c = 0; c < NCTX; c++) {
        ph->map[c] = (uint8_t)get_u8(r);
        if (ph->map[c] >= ntables) return "CTX stage maps a context to a table it does not have";
    }
    if (r->bad) return "CTX stage is truncated in a plane header";
    ph->ntables = ntables;
    ph->all = ntables + (grouped ? FLAG_CONTEXTS : (uint32_t)runs);
    return NULL;
}

/* Table k of the plane's ph->all into f (its 256 frequencies); NULL, or what is wrong. */
static const char *read_table(Reader *r, const PlaneHead *ph, uint32_t k, uint32_t *f) {
    if (ph->grouped && k >= ph->ntables) { /* a flag table: the frequency of 0, and 1 has the rest */
        memset(f, 0, sizeof(uint32_t) * 256);
        f[0] = get_varint(r);
        f[1] = PROB_SCALE - f[0];
        if (r->bad || f[0] > PROB_SCALE) return "CTX stage holds a malformed flag table";
    } else if (!get_table(r, f)) {
        return "CTX stage holds a malformed frequency table";
    }
    return NULL;
}

/* The plane's bands (one for a plane without bands), each one's rows and coded samples into band (when not
   NULL) and their count into *count; NULL, or what is wrong. */
static const char *read_bands(Reader *r, const PlaneHead *ph, Py_ssize_t h, DecBand *band, int *count) {
    int bands = 1;
    if (ph->banded) {
        bands = (int)get_u8(r);
        if (r->bad) return "CTX stage is truncated in a plane header";
        if (bands < 1 || bands > h) return "CTX stage declares an impossible number of bands";
    }
    for (int b = 0; b < bands; b++) {
        const uint8_t *p, *end;
        if (!coded_samples(r, &p, &end)) return "CTX stage is truncated in a plane's coded samples";
        if (band) band[b] = (DecBand){band_row(h, bands, b), band_row(h, bands, b + 1), p, end, NULL};
    }
    *count = bands;
    return NULL;
}

/* Decodes one plane from r into plane; returns NULL on success or a message naming what is wrong. With med
   (a plane whose last pixel stage is MED: 1 + its flip, 0x80 for signed values, else 0; 0 for none) each sample
   is also put back from its MED residual as soon as it is decoded: that chain (left neighbour → value) and the
   coder's (symbol → magnitude → context → symbol) are independent, so the processor runs them side by side
   instead of one pass after the other (a 1080p frame's MED pass took a third of its decode). A banded plane's
   bands are decoded at once on up to threads threads, except with med: undoing MED on a band's first row needs
   the band above it decoded. */
static const char *decode_plane(Reader *r, Py_ssize_t h, Py_ssize_t w, uint8_t *plane, int groups_allowed,
                                int bands_allowed, int med, int threads) {
    PlaneHead ph;
    const char *err = read_head(r, groups_allowed, bands_allowed, &ph);
    if (err) return err;
    if (ph.stored) {
        size_t n = (size_t)h * (size_t)w;
        if ((size_t)(r->end - r->p) < n) return "CTX stage is truncated in a stored plane";
        memcpy(plane, r->p, n);
        r->p += n;
        if (med) med_undo_plane(plane, h, w, med - 1);
        return NULL;
    }
    DecTables *t = malloc(sizeof *t);
    if (t) {
        *t = (DecTables){.ntables = ph.ntables, .grouped = ph.grouped, .runs = ph.runs, .centre = ph.centre,
                         .med = med};
        t->fstart = malloc(sizeof(uint32_t[256]) * ph.all);
        t->lut = malloc(sizeof(uint16_t[BUCKETS]) * ph.all);
    }
    if (!t || !t->fstart || !t->lut) {
        err = "no memory";
        goto done;
    }
    for (uint32_t k = 0; k < ph.all; k++) {
        uint32_t f[256];
        if ((err = read_table(r, &ph, k, f))) goto done;
        uint32_t s0 = 0;
        for (int s = 0; s < 256; s++) {
            t->fstart[k][s] = f[s] << 16 | s0;
            s0 += f[s];
        }
        fill_buckets(t->fstart[k], t->lut[k]);
    }
    for (int act = 0; act <= MAX_ACT; act++) {
        t->bucket_of[act] = t->lut[ph.map[ACT_CTX[act]]];
        t->fstart_of[act] = t->fstart[ph.map[ACT_CTX[act]]];
    }
    DecBands d = {.tables = t, .plane = plane, .w = w};
    int bands;
    if ((err = read_bands(r, &ph, h, d.band, &bands))) goto done;
    if (threads > 1 && bands > 1 && !med)
        run_team(decode_band, &d, bands, threads);
    else
        for (int b = 0; b < bands && (b == 0 || !d.band[b - 1].err); b++) decode_band(&d, b);
    for (int b = 0; b < bands && !err; b++) err = d.band[b].err;
done:
    if (t) {
        free(t->fstart);
        free(t->lut);
    }
    free(t);
    return err;
}

/* Steps r over one coded plane without decoding it, through what decode_plane reads before its samples; 0
   where anything is wrong (the caller then decodes plane by plane, which says what). */
static int skip_plane(Reader *r, Py_ssize_t h, Py_ssize_t w, int groups_allowed, int bands_allowed) {
    PlaneHead ph;
    if (read_head(r, groups_allowed, bands_allowed, &ph)) return 0;
    if (ph.stored) {
        const size_t n = (size_t)h * (size_t)w;
        if ((size_t)(r->end - r->p) < n) return 0;
        r->p += n;
        return 1;
    }
    for (uint32_t k = 0; k < ph.all; k++) {
        uint32_t f[256];
        if (read_table(r, &ph, k, f)) return 0;
    }
    int bands;
    return read_bands(r, &ph, h, NULL, &bands) == NULL;
}

/* ---------------------------------------------------------------------------------------------- Python */

static int plane_shape(Py_ssize_t channels, Py_ssize_t height, Py_ssize_t width, Py_ssize_t *n) {
    /* Bounded so that every size below fits a 32-bit size_t too (armhf): at most 2^28 samples a plane. */
    if (channels < 1 || channels > 4 || height < 1 || width < 1 || height > (1 << 16) || width > (1 << 16) ||
        (int64_t)height * (int64_t)width > ((int64_t)1 << 28)) {
        PyErr_Format(PyExc_ValueError, "CTX stage: bad shape %zd x %zd x %zd", channels, height, width);
        return 0;
    }
    *n = height * width;
    return 1;
}

/* Parses (planes, channels, height, width[, threads]) for encode and cost; on failure releases the buffer and
   returns 0. */
static int planes_arg(PyObject *args, Py_buffer *view, Py_ssize_t *channels, Py_ssize_t *height,
                      Py_ssize_t *width, Py_ssize_t *n, int *threads) {
    if (!PyArg_ParseTuple(args, "y*nnn|i", view, channels, height, width, threads)) return 0;
    if (!plane_shape(*channels, *height, *width, n)) {
        PyBuffer_Release(view);
        return 0;
    }
    if (view->len != *channels * *n) {
        PyErr_Format(PyExc_ValueError, "CTX stage: buffer holds %zd bytes, shape needs %zd", view->len,
                     *channels * *n);
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(encode_doc,
             "encode(planes, channels, height, width, threads=1) -> bytes\n\n"
             "Code a C-contiguous (channels, height, width) uint8 buffer, plane by plane (group planes,\n"
             "banded from 2^19 samples); large planes or one plane's bands up to threads at once (the same bytes).");

typedef struct {
    const uint8_t *planes;
    Py_ssize_t height, width, n;
    uint8_t *out;  /* plane c codes into out + c * slot */
    size_t slot;
    size_t *written;
    double *cost;  /* costing: plane c's estimate, else NULL */
    int band_threads; /* each plane's bands at once on up to this many */
} PlaneJobs;

static void encode_job(void *ctx, Py_ssize_t c) {
    PlaneJobs *j = ctx;
    const uint8_t *plane = j->planes + c * j->n;
    if (j->cost)
        j->written[c] = encode_plane(plane, j->height, j->width, NULL, &j->cost[c], j->band_threads);
    else
        j->written[c] =
            encode_plane(plane, j->height, j->width, j->out + (size_t)c * j->slot, NULL, j->band_threads);
}

/* One plane's bands on the threads; several planes each on its own. */
static void code_planes(PlaneJobs *jobs, Py_ssize_t channels, int threads) {
    jobs->band_threads = channels == 1 ? threads : 1;
    run_team(encode_job, jobs, channels, use_threads(threads, channels, jobs->n));
}

static PyObject *ctx_encode(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t channels, height, width, n;
    int threads = 1;
    if (!planes_arg(args, &view, &channels, &height, &width, &n, &threads)) return NULL;
    const size_t slot = plane_bound((size_t)n);
    uint8_t *out = malloc(slot * (size_t)channels);
    if (!out) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    size_t written[MAX_THREADS] = {0}, total = 0;
    PlaneJobs jobs = {(const uint8_t *)view.buf, height, width, n, out, slot, written, NULL, 1};
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS;
    code_planes(&jobs, channels, threads);
    for (Py_ssize_t c = 0; c < channels; c++) { /* each plane after the one before */
        ok = ok && written[c] > 0;
        if (ok && total != (size_t)c * slot) memmove(out + total, out + (size_t)c * slot, written[c]);
        total += written[c];
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&view);
    if (!ok) {
        free(out);
        return PyErr_NoMemory();
    }
    PyObject *result = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)total);
    free(out);
    return result;
}

PyDoc_STRVAR(cost_doc,
             "cost(planes, channels, height, width, threads=1) -> float\n\n"
             "The bytes encode would return, less a few, without coding: what the encoder's estimates need.");

static PyObject *ctx_cost(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t channels, height, width, n;
    int threads = 1;
    if (!planes_arg(args, &view, &channels, &height, &width, &n, &threads)) return NULL;
    size_t written[MAX_THREADS] = {0};
    double cost[MAX_THREADS] = {0.0}, total = 0.0;
    PlaneJobs jobs = {(const uint8_t *)view.buf, height, width, n, NULL, 0, written, cost, 1};
    int ok = 1;
    Py_BEGIN_ALLOW_THREADS;
    code_planes(&jobs, channels, threads);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&view);
    for (Py_ssize_t c = 0; c < channels; c++) {
        ok = ok && written[c] > 0;
        total += cost[c];
    }
    if (!ok) return PyErr_NoMemory();
    return PyFloat_FromDouble(total);
}

PyDoc_STRVAR(bands_doc,
             "bands(height, width) -> int\n\n"
             "How many bands encode cuts a plane of this shape into (1: not banded, a record of version 4;\n"
             "more: version 8).");

static PyObject *ctx_bands(PyObject *self, PyObject *args) {
    (void)self;
    Py_ssize_t height, width, n;
    if (!PyArg_ParseTuple(args, "nn", &height, &width) || !plane_shape(1, height, width, &n)) return NULL;
    return PyLong_FromLong(band_count(height, width));
}

typedef struct {
    Reader reader[MAX_THREADS]; /* each plane's bytes */
    Py_ssize_t height, width, n;
    uint8_t *planes;
    int groups, bands;
    const char *med;
    const char *err[MAX_THREADS];
} DecodeJobs;

static void decode_job(void *ctx, Py_ssize_t c) {
    DecodeJobs *j = ctx;
    const int plane_med = j->med && j->med[c] ? 1 + ((unsigned char)j->med[c] & 0x80) : 0;
    j->err[c] = decode_plane(&j->reader[c], j->height, j->width, j->planes + c * j->n, j->groups, j->bands,
                             plane_med, 1);
}

/* The planes found first (skip_plane), then decoded at once; 0 when they could not all be found (the caller
   decodes them one by one instead, whose errors say what is wrong). Otherwise 1, *err the first failing
   plane's error, as decoding them in order would have said. */
static int decode_planes_at_once(Reader *r, Py_ssize_t channels, Py_ssize_t height, Py_ssize_t width,
                                 uint8_t *planes, int groups, int bands, const char *med, int threads,
                                 const char **err) {
    DecodeJobs jobs = {.height = height, .width = width, .n = height * width, .planes = planes, .groups = groups,
                       .bands = bands, .med = med};
    for (Py_ssize_t c = 0; c < channels; c++) {
        const uint8_t *start = r->p;
        if (!skip_plane(r, height, width, groups, bands)) return 0;
        jobs.reader[c] = (Reader){start, r->p, 0};
    }
    if (r->p != r->end) return 0;
    run_team(decode_job, &jobs, channels, threads);
    for (Py_ssize_t c = 0; c < channels && !*err; c++) *err = jobs.err[c];
    return 1;
}

PyDoc_STRVAR(decode_doc,
             "decode(payload, channels, height, width, groups=True, med=None, threads=1, bands=True) -> bytes\n\n"
             "Inverse of encode; raises ValueError on any inconsistency, never reads past the payload.\n"
             "groups: the payload may hold group planes (a record of version 4 or later).\n"
             "bands: the payload may hold banded group planes (a record of version 8 or later).\n"
             "med: bytes, one a plane, nonzero to undo MED on it too (as unmed), 0x80 set for signed values.");

static PyObject *ctx_decode(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t channels, height, width, n;
    int groups = 1, threads = 1, bands = 1;
    const char *med = NULL;
    Py_ssize_t med_len = 0;
    if (!PyArg_ParseTuple(args, "y*nnn|pz#ip", &view, &channels, &height, &width, &groups, &med, &med_len,
                          &threads, &bands))
        return NULL;
    if (!plane_shape(channels, height, width, &n)) {
        PyBuffer_Release(&view);
        return NULL;
    }
    if (med && med_len != channels) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "CTX stage: med needs one byte a plane");
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, channels * n);
    if (!result) {
        PyBuffer_Release(&view);
        return NULL;
    }
    uint8_t *planes = (uint8_t *)PyBytes_AS_STRING(result);
    Reader r = {(const uint8_t *)view.buf, (const uint8_t *)view.buf + view.len, 0};
    const char *err = NULL;
    Py_BEGIN_ALLOW_THREADS;
    const int at_once = use_threads(threads, channels, n) > 1 &&
                        decode_planes_at_once(&r, channels, height, width, planes, groups, bands, med, threads, &err);
    if (!at_once) { /* one plane after the other: also what says what is wrong with planes that cannot be found */
        r.p = (const uint8_t *)view.buf;
        r.bad = 0;
        for (Py_ssize_t c = 0; c < channels && !err; c++) {
            const int plane_med = med && med[c] ? 1 + ((unsigned char)med[c] & 0x80) : 0;
            err = decode_plane(&r, height, width, planes + c * n, groups, bands, plane_med,
                               channels == 1 ? threads : 1);
        }
        if (!err && r.p != r.end) err = "CTX stage has bytes after its last plane";
    }
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&view);
    if (err) {
        Py_DECREF(result);
        if (strcmp(err, "no memory") == 0) return PyErr_NoMemory();
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    return result;
}

/* -------------------------------------------------------------------------------------------------- MED */

/* The MED stage (LOCO-I median edge detector), as docs/wire-format.md defines it and agent/codec/transforms.py
   implements it with numpy: here because decoding is sequential (numpy walks anti-diagonals, ~10x slower).
   flip is 0x80 for a plane of signed values (predicted on its bytes XOR 0x80), else 0. */
/* MED residuals of row y (forward: every residual depends on inputs only, so the row vectorises). rows holds two
   rows of inputs (XOR flip) with a zero in front, zeroed before row 0; row y's become row y + 1's above. In
   bytes: with lo ≤ hi the neighbours a and b ordered, the prediction is lo when c ≥ hi, hi when c ≤ lo, and
   else a + b - c, which then lies strictly between them, so computing it mod 256 is exact; 16 samples a vector
   instead of int16's 8 (the residual pass with MED 1.3-1.5x faster). */
static inline void med_row(const uint8_t *src, uint8_t *dst, Py_ssize_t w, uint8_t flip,
                           uint8_t *rows /* 2 (w + 1) */, Py_ssize_t y) {
    const uint8_t *up = rows + (y & 1) * (w + 1);
    uint8_t *now = rows + ((y + 1) & 1) * (w + 1);
    for (Py_ssize_t x = 0; x < w; x++) now[x + 1] = (uint8_t)(src[x] ^ flip);
    for (Py_ssize_t x = 0; x < w; x++) {
        const uint8_t a = now[x], b = up[x + 1], c = up[x];
        const uint8_t lo = a < b ? a : b, hi = a < b ? b : a;
        const uint8_t mid = (uint8_t)(a + b - c);
        const uint8_t p = c >= hi ? lo : (c <= lo ? hi : mid);
        dst[x] = (uint8_t)(now[x + 1] - p);
    }
}

static void med_plane(const uint8_t *in, uint8_t *out, Py_ssize_t h, Py_ssize_t w, uint8_t flip, int inverse,
                      uint8_t *rows /* 2 (w + 1) */) {
    if (!inverse) {
        memset(rows, 0, (size_t)(2 * (w + 1)));
        for (Py_ssize_t y = 0; y < h; y++) med_row(in + y * w, out + y * w, w, flip, rows, y);
        return;
    }
    for (Py_ssize_t y = 0; y < h; y++) {
        const uint8_t *src = in + y * w;
        uint8_t *dst = out + y * w;
        const uint8_t *up = out + (y - 1) * w;
        int a = 0, c = 0;
        for (Py_ssize_t x = 0; x < w; x++) {
            int b = y ? (up[x] ^ flip) : 0;
            int lo = a < b ? a : b, hi = a < b ? b : a;
            int p = a + b - c;
            p = p < lo ? lo : (p > hi ? hi : p);
            int v = (src[x] + p) & 0xff;
            dst[x] = (uint8_t)(v ^ flip);
            a = v;
            c = b;
        }
    }
}

static PyObject *med_call(PyObject *args, int inverse) {
    Py_buffer view, flips;
    Py_ssize_t channels, height, width, n;
    if (!PyArg_ParseTuple(args, "y*y*nnn", &view, &flips, &channels, &height, &width)) return NULL;
    PyObject *result = NULL;
    if (!plane_shape(channels, height, width, &n)) goto done;
    if (view.len != channels * n || flips.len != channels) {
        PyErr_SetString(PyExc_ValueError, "MED: buffer sizes do not match the shape");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, channels * n);
    if (!result) goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    const uint8_t *flip = (const uint8_t *)flips.buf;
    uint8_t *rows = malloc((size_t)(2 * (width + 1)));
    if (!rows) {
        Py_CLEAR(result);
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t k = 0; k < channels; k++)
        med_plane((const uint8_t *)view.buf + k * n, out + k * n, height, width, flip[k] ? 0x80 : 0, inverse,
                  rows);
    Py_END_ALLOW_THREADS;
    free(rows);
done:
    PyBuffer_Release(&view);
    PyBuffer_Release(&flips);
    return result;
}

PyDoc_STRVAR(med_doc, "med(planes, signed, channels, height, width) -> bytes\n\n"
                      "MED residuals of (channels, height, width) uint8 planes; signed[k] != 0 for signed planes.");
static PyObject *med_forward(PyObject *self, PyObject *args) {
    (void)self;
    return med_call(args, 0);
}

PyDoc_STRVAR(unmed_doc, "unmed(residuals, signed, channels, height, width) -> bytes\n\nInverse of med.");
static PyObject *med_inverse(PyObject *self, PyObject *args) {
    (void)self;
    return med_call(args, 1);
}

/* ----------------------------------------------------------------------------------------- chroma blocks */

/* BLOCK_CHROMA (docs/wire-format.md) on one plane: the top-left sample t of every aligned 2 x 2 block goes to the
   top-left quadrant as t - 128, the block's other samples to the other three quadrants as differences from t,
   all mod 256; inverse undoes it. A pass of loads and stores, 5-10x faster than numpy's strided views. */
static void block_plane(const uint8_t *restrict in, uint8_t *restrict out, Py_ssize_t h, Py_ssize_t w,
                        int inverse) {
    const Py_ssize_t hh = (h + 1) / 2, wh = (w + 1) / 2, pairs = w / 2;
    for (Py_ssize_t by = 0; by < hh; by++) {
        const int second = 2 * by + 1 < h;
        if (!inverse) {
            const uint8_t *r0 = in + 2 * by * w, *r1 = second ? r0 + w : r0;
            uint8_t *tl = out + by * w, *tr = tl + wh, *bl = out + (hh + by) * w, *br = bl + wh;
            for (Py_ssize_t x = 0; x < pairs; x++) {
                const uint8_t t = r0[2 * x];
                tl[x] = (uint8_t)(t - 128);
                tr[x] = (uint8_t)(r0[2 * x + 1] - t);
                if (second) {
                    bl[x] = (uint8_t)(r1[2 * x] - t);
                    br[x] = (uint8_t)(r1[2 * x + 1] - t);
                }
            }
            if (w & 1) {
                tl[pairs] = (uint8_t)(r0[w - 1] - 128);
                if (second) bl[pairs] = (uint8_t)(r1[w - 1] - r0[w - 1]);
            }
        } else {
            const uint8_t *tl = in + by * w, *tr = tl + wh, *bl = in + (hh + by) * w, *br = bl + wh;
            uint8_t *r0 = out + 2 * by * w, *r1 = second ? r0 + w : r0;
            for (Py_ssize_t x = 0; x < pairs; x++) {
                const uint8_t t = (uint8_t)(tl[x] + 128);
                r0[2 * x] = t;
                r0[2 * x + 1] = (uint8_t)(tr[x] + t);
                if (second) {
                    r1[2 * x] = (uint8_t)(bl[x] + t);
                    r1[2 * x + 1] = (uint8_t)(br[x] + t);
                }
            }
            if (w & 1) {
                const uint8_t t = (uint8_t)(tl[pairs] + 128);
                r0[w - 1] = t;
                if (second) r1[w - 1] = (uint8_t)(bl[pairs] + t);
            }
        }
    }
}

PyDoc_STRVAR(blocks_doc, "blocks(planes, channels, height, width, inverse) -> bytes\n\n"
                         "BLOCK_CHROMA (or its inverse) on planes 1.. of (channels, height, width) uint8 planes; "
                         "plane 0 is copied.");
static PyObject *blocks(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t channels, height, width, n;
    int inverse;
    if (!PyArg_ParseTuple(args, "y*nnnp", &view, &channels, &height, &width, &inverse)) return NULL;
    PyObject *result = NULL;
    if (!plane_shape(channels, height, width, &n)) goto done;
    if (view.len != channels * n) {
        PyErr_SetString(PyExc_ValueError, "BLOCK_CHROMA: buffer size does not match the shape");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, channels * n);
    if (!result) goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    const uint8_t *in = (const uint8_t *)view.buf;
    Py_BEGIN_ALLOW_THREADS;
    memcpy(out, in, (size_t)n);
    for (Py_ssize_t k = 1; k < channels; k++) block_plane(in + k * n, out + k * n, height, width, inverse);
    Py_END_ALLOW_THREADS;
done:
    PyBuffer_Release(&view);
    return result;
}

/* The loops that go over every pixel of a frame are also built for AVX2 on x86-64 with glibc and picked at load
   time (GCC's target_clones); the baseline build is what runs elsewhere (the Pi's NEON is its baseline).
   CCTV_NO_CLONES builds the baseline alone, so that a test on an AVX2 machine can check it codes the same. */
#if defined(__x86_64__) && defined(__GLIBC__) && (defined(__GNUC__) || defined(__clang__)) && !defined(CCTV_NO_CLONES)
#define PIXEL_CLONES __attribute__((target_clones("default", "avx2")))
#else
#define PIXEL_CLONES
#endif

/* ------------------------------------------------------------------------------------------- JPEG chroma */

/* JPEG_CHROMA (docs/wire-format.md): a still decoded by libjpeg from a 4:2:0 JPEG is, pixel for pixel, JFIF's
   YCbCr -> RGB conversion (jdcolor.c's tables) of a luma plane and of two quarter-size chroma planes upsampled
   by h2v2 "fancy" (triangle) interpolation (jdsample.c). Its B-G and R-G planes carry that interpolation's
   rounding as noise that no predictor sees; the quarter-size planes cost a sixth as much (a 1080p LTA still:
   43 kB against 267). The encoder recovers them from the pixels; whatever it cannot recover (clipped pixels,
   a different decoder) lands in two residual planes, so the stage is exact for any frame. */
static int32_t JCB_B[256], JCR_R[256], JCB_G[256], JCR_G[256];
#define JPEG_JACOBI_STEPS 3
#define JPEG_SWEEPS 2

static void jpeg_tables(void) {
    for (int i = 0; i < 256; i++) {
        const int32_t x = i - 128;
        JCR_R[i] = (91881 * x + 32768) >> 16;  /* FIX(1.40200) */
        JCB_B[i] = (116130 * x + 32768) >> 16; /* FIX(1.77200) */
        JCR_G[i] = -46802 * x;                 /* -FIX(0.71414) */
        JCB_G[i] = -22554 * x + 32768;         /* -FIX(0.34414), plus ONE_HALF */
    }
}

static inline int jpeg_g(int cb, int cr) { return (JCB_G[cb] + JCR_G[cr]) >> 16; }
static inline Py_ssize_t clampi(Py_ssize_t v, Py_ssize_t hi) { return v < 0 ? 0 : (v > hi ? hi : v); }

/* Column sums of a row pair (as jdsample.c makes them, 3 near + far), padded with the edge column on both sides so
   that every output of the row is the same expression. int16: a sum is at most 4 * 255. */
static inline void column_sums(const uint8_t *restrict near, const uint8_t *restrict far, Py_ssize_t w2,
                               int16_t *restrict cs /* w2 + 2 */) {
    for (Py_ssize_t j = 0; j < w2; j++) cs[j + 1] = (int16_t)(3 * near[j] + far[j]);
    cs[0] = cs[1];
    cs[w2 + 1] = cs[w2];
}

/* Output x = 2j (even) and 2j + 1 (odd) of a row from its padded column sums: the neighbour outside the plane is
   the edge sample itself, so the first output is (4 cs + 8) >> 4 and the last (4 cs + 7) >> 4, as in jdsample.c. */
#define FANCY_EVEN(cs, j) ((3 * (cs)[(j) + 1] + (cs)[(j)] + 8) >> 4)
#define FANCY_ODD(cs, j) ((3 * (cs)[(j) + 1] + (cs)[(j) + 2] + 7) >> 4)

/* The whole upsampled plane, row by row; both outputs of a column sum in one loop, which vectorises. */
PIXEL_CLONES
static void fancy_up(const uint8_t *q, Py_ssize_t h2, Py_ssize_t w2, uint8_t *out, int16_t *cs /* w2 + 2 */) {
    const Py_ssize_t w = 2 * w2;
    for (Py_ssize_t y = 0; y < 2 * h2; y++) {
        const uint8_t *r0 = q + (y >> 1) * w2, *r1 = q + clampi((y >> 1) + ((y & 1) ? 1 : -1), h2 - 1) * w2;
        column_sums(r0, r1, w2, cs);
        uint8_t *restrict o = out + y * w;
        for (Py_ssize_t j = 0; j < w2; j++) {
            o[2 * j] = (uint8_t)FANCY_EVEN(cs, j);
            o[2 * j + 1] = (uint8_t)FANCY_ODD(cs, j);
        }
    }
}

static inline uint8_t clamp_u8(int v) { return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v)); }

/* (cb, cr) by (B - G, R - G) as JFIF's conversion makes them from an unclipped pixel: cb << 8 | cr where one does
   (any one: pairs that give the same differences give the same B and R from G), 0 where none does: (0, 0) gives
   differences far outside +-254 (B - G = -362), so it is never an entry. 16 bits an entry (512 kB, about a
   Pi's or this x86's L2), made on first use (the encoder's), not at import, so decoders do not carry it. */
#define JINV_SPAN 512
static uint16_t *JINV;

static int jpeg_inverse_table(void) {
    if (JINV) return 1;
    uint16_t *t = calloc((size_t)JINV_SPAN * JINV_SPAN, sizeof(uint16_t));
    if (!t) return 0;
    for (int u = 255; u >= 0; u--) /* downwards, so that the lowest pair is kept where two coincide */
        for (int v = 255; v >= 0; v--) {
            const int gt = jpeg_g(u, v), dbg = JCB_B[u] - gt, drg = JCR_R[v] - gt; /* within -364..362 */
            if (dbg < -254 || dbg > 254 || drg < -254 || drg > 254) continue; /* no unclipped pixel has them */
            t[(dbg + JINV_SPAN / 2) * JINV_SPAN + drg + JINV_SPAN / 2] = (uint16_t)(u << 8 | v);
        }
    JINV = t;
    return 1;
}

/* Each pixel's (cb, cr) where B - G and R - G come from JFIF's conversion of one, unclipped: ok[k] says where (no
   channel at 0 or 255, and a pair in the table); elsewhere cb and cr hold whatever the table gives, which nothing
   reads (every use is masked by ok). Branch-free: the index is in the table for any pixel. */
static void jpeg_invert(const uint8_t *restrict B, const uint8_t *restrict G, const uint8_t *restrict R,
                        Py_ssize_t n, uint8_t *restrict ok, uint8_t *restrict cb, uint8_t *restrict cr) {
    const uint16_t *table = JINV;
    for (Py_ssize_t k = 0; k < n; k++) {
        const int b = B[k], g = G[k], r = R[k];
        const uint16_t e = table[(b - g + JINV_SPAN / 2) * JINV_SPAN + r - g + JINV_SPAN / 2];
        const int unclipped = ((unsigned)(b - 1) < 254u) & ((unsigned)(g - 1) < 254u) & ((unsigned)(r - 1) < 254u);
        cb[k] = (uint8_t)(e >> 8);
        cr[k] = (uint8_t)e;
        ok[k] = (uint8_t)(unclipped & (e != 0));
    }
}

/* Mismatches against full (where ok) of the 4 x 4 outputs that q[i][j] reaches, were q[i][j] one less, as it
   is, and one more: each output's sum before the shift is made once, with the weight q[i][j] has in it. */
static void window_misses(const uint8_t *q, Py_ssize_t h2, Py_ssize_t w2, const uint8_t *full, const uint8_t *ok,
                          Py_ssize_t i, Py_ssize_t j, int misses[3]) {
    const Py_ssize_t w = 2 * w2;
    misses[0] = misses[1] = misses[2] = 0;
    if (i >= 1 && i + 2 <= h2 && j >= 1 && j + 2 <= w2) {
        /* Away from the edges nothing is clamped: output row 2i - 1 + r takes near and far rows from
           (i-1, i), (i, i-1), (i, i+1), (i+1, i), and q[i][j] weighs {1, 3, 3, 1} by row times the same by
           column in it. Branch-free, the same sums as the general loop below. */
        static const int WEIGHT[4] = {1, 3, 3, 1};
        const uint8_t *rows[4][2] = {{q + (i - 1) * w2, q + i * w2},
                                     {q + i * w2, q + (i - 1) * w2},
                                     {q + i * w2, q + (i + 1) * w2},
                                     {q + (i + 1) * w2, q + i * w2}};
        int m0 = 0, m1 = 0, m2 = 0;
        for (int r = 0; r < 4; r++) {
            const uint8_t *nr = rows[r][0], *fr = rows[r][1];
            const int a = 3 * nr[j - 1] + fr[j - 1], b = 3 * nr[j] + fr[j], c = 3 * nr[j + 1] + fr[j + 1];
            const int sums[4] = {3 * a + b + 7, 3 * b + a + 8, 3 * b + c + 7, 3 * c + b + 8};
            const Py_ssize_t at = (2 * i - 1 + r) * w + 2 * j - 1;
            for (int x = 0; x < 4; x++) {
                const int weight = WEIGHT[r] * WEIGHT[x], target = full[at + x], valid = ok[at + x];
                m0 += valid & (((sums[x] - weight) >> 4) != target);
                m1 += valid & ((sums[x] >> 4) != target);
                m2 += valid & (((sums[x] + weight) >> 4) != target);
            }
        }
        misses[0] = m0, misses[1] = m1, misses[2] = m2;
        return;
    }
    for (Py_ssize_t y = 2 * i - 1; y <= 2 * i + 2; y++) {
        if (y < 0 || y >= 2 * h2) continue;
        const Py_ssize_t in = y >> 1, ifar = clampi(in + ((y & 1) ? 1 : -1), h2 - 1);
        const uint8_t *qn = q + in * w2, *qf = q + ifar * w2;
        for (Py_ssize_t x = 2 * j - 1; x <= 2 * j + 2; x++) {
            if (x < 0 || x >= w || !ok[y * w + x]) continue;
            const Py_ssize_t jn = x >> 1, jfar = clampi(jn + ((x & 1) ? 1 : -1), w2 - 1);
            const int sum = 3 * (3 * qn[jn] + qf[jn]) + 3 * qn[jfar] + qf[jfar] + ((x & 1) ? 7 : 8);
            const int weight = 9 * (in == i && jn == j) + 3 * (ifar == i && jn == j) + 3 * (in == i && jfar == j) +
                               (ifar == i && jfar == j);
            const int target = full[y * w + x];
            misses[0] += ((sum - weight) >> 4) != target;
            misses[1] += (sum >> 4) != target;
            misses[2] += ((sum + weight) >> 4) != target;
        }
    }
}

/* A full-size plane's samples by their place in the 2 x 2 blocks: quarter plane k (h2 x w2) holds the samples at
   (2i + k / 2, 2j + k % 2), so that the solver's loops read every block's four samples contiguously. */
PIXEL_CLONES
static void quarters_of(const uint8_t *restrict full, Py_ssize_t h2, Py_ssize_t w2, uint8_t *restrict out) {
    const Py_ssize_t w = 2 * w2, m = h2 * w2;
    for (Py_ssize_t i = 0; i < h2; i++)
        for (int dy = 0; dy < 2; dy++) {
            const uint8_t *row = full + (2 * i + dy) * w;
            uint8_t *even = out + (2 * dy) * m + i * w2, *odd = even + m;
            for (Py_ssize_t j = 0; j < w2; j++) {
                even[j] = row[2 * j];
                odd[j] = row[2 * j + 1];
            }
        }
}

/* One block row of upsample_errors: the four outputs of each block from the row's two column sums (up: the
   block's upper output row, down: its lower one), against full's quarters f0-f3 where ok's quarters k0-k3 say.
   Its own function so that restrict holds for the compiler (ok is 0 or 1: branchless, so the loop vectorises). */
static inline void error_row(const int16_t *restrict up, const int16_t *restrict down, const uint8_t *restrict f0,
                             const uint8_t *restrict f1, const uint8_t *restrict f2, const uint8_t *restrict f3,
                             const uint8_t *restrict k0, const uint8_t *restrict k1, const uint8_t *restrict k2,
                             const uint8_t *restrict k3, Py_ssize_t w2, int16_t *restrict e, uint8_t *restrict mi) {
    for (Py_ssize_t j = 0; j < w2; j++) {
        const int16_t d0 = (int16_t)((f0[j] - FANCY_EVEN(up, j)) * k0[j]);
        const int16_t d1 = (int16_t)((f1[j] - FANCY_ODD(up, j)) * k1[j]);
        const int16_t d2 = (int16_t)((f2[j] - FANCY_EVEN(down, j)) * k2[j]);
        const int16_t d3 = (int16_t)((f3[j] - FANCY_ODD(down, j)) * k3[j]);
        e[j] = (int16_t)(d0 + d1 + d2 + d3); /* within +-1020 */
        mi[j] = (uint8_t)((d0 | d1 | d2 | d3) != 0);
    }
}

/* err[block] = the sum of full - up over the block's valid outputs, where up is the fancy upsampling of q, and
   miss[block] whether any of them differs. full and ok come as quarters (quarters_of), so the upsampled outputs
   are never stored: each block row's two column sums give its four outputs, compared where they are made. */
PIXEL_CLONES
static void upsample_errors(const uint8_t *q, Py_ssize_t h2, Py_ssize_t w2, const uint8_t *fq, const uint8_t *okq,
                            int16_t *cs /* 2 (w2 + 2) */, int16_t *err, uint8_t *miss) {
    const Py_ssize_t m = h2 * w2;
    int16_t *up = cs, *down = cs + w2 + 2;
    for (Py_ssize_t i = 0; i < h2; i++) {
        const uint8_t *row = q + i * w2;
        column_sums(row, q + (i > 0 ? i - 1 : 0) * w2, w2, up);
        column_sums(row, q + (i + 1 < h2 ? i + 1 : h2 - 1) * w2, w2, down);
        const Py_ssize_t at = i * w2;
        error_row(up, down, fq + at, fq + m + at, fq + 2 * m + at, fq + 3 * m + at, okq + at, okq + m + at,
                  okq + 2 * m + at, okq + 3 * m + at, w2, err + at, miss + at);
    }
}

/* Each block's first estimate, the mean of its valid pixels rounded, (2 sum + n) / (2 n), or 128 where it has none;
   has[block] says which. Returns how many blocks have none. Branch-free (a select a count), so it vectorises. */
PIXEL_CLONES
static Py_ssize_t block_means(const uint8_t *restrict fq, const uint8_t *restrict okq, Py_ssize_t m,
                              uint8_t *restrict q, uint8_t *restrict has) {
    const uint8_t *f0 = fq, *f1 = fq + m, *f2 = fq + 2 * m, *f3 = fq + 3 * m;
    const uint8_t *k0 = okq, *k1 = okq + m, *k2 = okq + 2 * m, *k3 = okq + 3 * m;
    Py_ssize_t empty = 0;
    for (Py_ssize_t k = 0; k < m; k++) {
        const int n = k0[k] + k1[k] + k2[k] + k3[k];
        const int sum = f0[k] * k0[k] + f1[k] * k1[k] + f2[k] * k2[k] + f3[k] * k3[k];
        const int third = ((2 * sum + 3) * 10923) >> 16; /* (2 sum + 3) / 6, exact below 2 048 */
        const int mean = n == 4 ? (sum + 2) >> 2 : (n == 2 ? (sum + 1) >> 1 : (n == 1 ? sum : (n == 3 ? third : 128)));
        q[k] = (uint8_t)mean;
        has[k] = (uint8_t)(n > 0);
        empty += n == 0;
    }
    return empty;
}

/* One Jacobi step: each block's sample moves by 4/9 of its four outputs' summed error, rounded (each output
   weighs it 9/16, so their sum moves 9/4 a unit), clamped. int16 throughout: the sum is within +-1020. */
PIXEL_CLONES
static void jacobi_step(const int16_t *restrict err, Py_ssize_t m, uint8_t *restrict q) {
    for (Py_ssize_t k = 0; k < m; k++) {
        const int16_t e = err[k], move = (int16_t)((e >= 0 ? 4 * e + 4 : 4 * e - 4) / 9);
        const int16_t v = (int16_t)(q[k] + move);
        q[k] = (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
}

/* A quarter-size plane q whose fancy upsampling matches full wherever ok: block means, then Jacobi steps (each
   of a block's four outputs weighs q 9/16, so their sum moves 9/4 a unit), then greedy +-1 sweeps over the
   samples of blocks that miss (measured on five LTA stills: 98.2-98.8 % of pixels left with no residual).
   fq and okq are full and ok as quarters (quarters_of); the sweeps read full and ok themselves. */
static void jpeg_solve(const uint8_t *full, const uint8_t *ok, const uint8_t *fq, const uint8_t *okq, Py_ssize_t h2,
                       Py_ssize_t w2, uint8_t *q, int16_t *cs, int16_t *err /* h2 w2 */, uint8_t *miss /* h2 w2 */) {
    const Py_ssize_t m = h2 * w2;
    const Py_ssize_t empty = block_means(fq, okq, m, q, miss);
    /* A block all of whose pixels are clipped starts from a neighbour's value (one pass down and right, one up
       and left), not from grey: its upsampling reaches its neighbours' pixels. */
    const uint64_t all8 = 0x0101010101010101ull; /* eight blocks that have pixels: nothing to fill */
    for (Py_ssize_t i = 0; i < h2 && empty; i++)
        for (Py_ssize_t j = 0; j < w2; j++) {
            const Py_ssize_t k = i * w2 + j;
            if (j + 8 <= w2 && load8(miss + k) == all8) {
                j += 7;
                continue;
            }
            if (miss[k]) continue;
            const Py_ssize_t from = j > 0 && miss[k - 1] ? k - 1 : (i > 0 && miss[k - w2] ? k - w2 : -1);
            if (from >= 0) q[k] = q[from], miss[k] = 1;
        }
    for (Py_ssize_t i = h2 - 1; i >= 0 && empty; i--)
        for (Py_ssize_t j = w2 - 1; j >= 0; j--) {
            const Py_ssize_t k = i * w2 + j;
            if (j >= 7 && load8(miss + k - 7) == all8) {
                j -= 7;
                continue;
            }
            if (miss[k]) continue;
            const Py_ssize_t from = j + 1 < w2 && miss[k + 1] ? k + 1 : (i + 1 < h2 && miss[k + w2] ? k + w2 : -1);
            if (from >= 0) q[k] = q[from], miss[k] = 1;
        }
    for (int step = 0; step < JPEG_JACOBI_STEPS; step++) {
        upsample_errors(q, h2, w2, fq, okq, cs, err, miss);
        jacobi_step(err, m, q);
    }
    for (int sweep = 0; sweep < JPEG_SWEEPS; sweep++) {
        upsample_errors(q, h2, w2, fq, okq, cs, err, miss);
        int changed = 0;
        for (Py_ssize_t i = 0; i < h2; i++)
            for (Py_ssize_t j = 0; j < w2; j++) {
                if (j + 8 <= w2 && !load8(miss + i * w2 + j)) { /* eight blocks that match: the common case */
                    j += 7;
                    continue;
                }
                if (!miss[i * w2 + j]) continue; /* its own block matches (its neighbours' samples get their turn) */
                uint8_t *c = q + i * w2 + j;
                int mm[3];
                window_misses(q, h2, w2, full, ok, i, j, mm);
                int pick = 0;
                if (*c > 0 && mm[0] < mm[1]) pick = -1;
                if (*c < 255 && mm[2] < mm[1 + pick]) pick = 1;
                *c = (uint8_t)(*c + pick);
                changed += pick != 0;
            }
        if (!changed) break;
    }
}

/* JFIF's B^ and R^ of each pixel from G and its upsampled (cb, cr) (jdcolor.c's tables as the arithmetic they
   hold, so that the loop vectorises: the same values as JCB_B, JCR_R and jpeg_g). Forward (adding 0): bo = bi - B^
   and ro = ri - R^ with bi, ri the pixels' B and R; inverse (adding 1): bo = B^ + bi and ro = R^ + ri with bi, ri
   the residuals. */
PIXEL_CLONES
static void jpeg_predict(const uint8_t *restrict G, const uint8_t *restrict ub, const uint8_t *restrict ur,
                         Py_ssize_t n, const uint8_t *restrict bi, const uint8_t *restrict ri, uint8_t *restrict bo,
                         uint8_t *restrict ro, int adding) {
    const int sign = adding ? 1 : -1;
    for (Py_ssize_t k = 0; k < n; k++) {
        const int32_t cb = ub[k] - 128, cr = ur[k] - 128;
        const int32_t y = G[k] - ((-22554 * cb - 46802 * cr + 32768) >> 16);
        const int32_t b = y + ((116130 * cb + 32768) >> 16), r = y + ((91881 * cr + 32768) >> 16);
        const int32_t bc = b < 0 ? 0 : (b > 255 ? 255 : b), rc = r < 0 ? 0 : (r > 255 ? 255 : r);
        bo[k] = (uint8_t)(bi[k] + sign * bc);
        ro[k] = (uint8_t)(ri[k] + sign * rc);
    }
}

/* Forward: (B, G, R) planes -> (G, B - B^, R - R^, Q) with Q's top half the two quarter planes side by side. */
static int jpeg_forward(const uint8_t *in, Py_ssize_t h, Py_ssize_t w, uint8_t *out) {
    const Py_ssize_t n = h * w, h2 = h / 2, w2 = w / 2, m = h2 * w2;
    uint8_t *scratch = malloc((size_t)n);
    uint8_t *qb = malloc((size_t)(3 * m)); /* the two quarter planes, then the solver's block flags */
    int16_t *err = malloc(sizeof(int16_t) * (size_t)m);
    int16_t *cs = malloc(sizeof(int16_t) * (size_t)(2 * (w2 + 2)));
    if (!scratch || !qb || !err || !cs) {
        free(scratch);
        free(qb);
        free(err);
        free(cs);
        return 0;
    }
    /* The output's planes hold the work until they are written: the full-size (cb, cr) in planes 1 and 2, the
       pixels they were found for in plane 0 and, as quarters, in plane 3; the plane being solved for as quarters
       in scratch. Then the upsampled cr goes to plane 0 and the upsampled cb to scratch. */
    uint8_t *ok = out, *cb = out + n, *cr = out + 2 * n, *q = out + 3 * n, *up_b = scratch, *up_r = out;
    const uint8_t *B = in, *G = in + n, *R = in + 2 * n;
    jpeg_invert(B, G, R, n, ok, cb, cr);
    uint8_t *miss = qb + 2 * m;
    quarters_of(ok, h2, w2, q);
    quarters_of(cb, h2, w2, scratch);
    jpeg_solve(cb, ok, scratch, q, h2, w2, qb, cs, err, miss);
    quarters_of(cr, h2, w2, scratch);
    jpeg_solve(cr, ok, scratch, q, h2, w2, qb + m, cs, err, miss);
    memset(q, 0, (size_t)n);
    for (Py_ssize_t i = 0; i < h2; i++) {
        memcpy(q + i * w, qb + i * w2, (size_t)w2);
        memcpy(q + i * w + w2, qb + m + i * w2, (size_t)w2);
    }
    fancy_up(qb, h2, w2, up_b, cs);
    fancy_up(qb + m, h2, w2, up_r, cs);
    jpeg_predict(G, up_b, up_r, n, B, R, out + n, out + 2 * n, 0);
    memcpy(out, G, (size_t)n);
    free(qb);
    free(scratch);
    free(err);
    free(cs);
    return 1;
}

/* Inverse: (G, dB, dR, Q) -> (B, G, R). */
static int jpeg_inverse(const uint8_t *in, Py_ssize_t h, Py_ssize_t w, uint8_t *out) {
    const Py_ssize_t n = h * w, h2 = h / 2, w2 = w / 2;
    uint8_t *buf = malloc((size_t)(2 * n + 2 * h2 * w2));
    int16_t *cs = malloc(sizeof(int16_t) * (size_t)(w2 + 2));
    if (!buf || !cs) {
        free(buf);
        free(cs);
        return 0;
    }
    uint8_t *up_b = buf, *up_r = buf + n, *qb = buf + 2 * n, *qr = qb + h2 * w2;
    const uint8_t *q = in + 3 * n;
    for (Py_ssize_t i = 0; i < h2; i++) {
        memcpy(qb + i * w2, q + i * w, (size_t)w2);
        memcpy(qr + i * w2, q + i * w + w2, (size_t)w2);
    }
    fancy_up(qb, h2, w2, up_b, cs);
    fancy_up(qr, h2, w2, up_r, cs);
    const uint8_t *G = in, *dB = in + n, *dR = in + 2 * n;
    jpeg_predict(G, up_b, up_r, n, dB, dR, out, out + 2 * n, 1);
    memcpy(out + n, G, (size_t)n);
    free(buf);
    free(cs);
    return 1;
}

PyDoc_STRVAR(jpeg_doc, "jpeg(planes, height, width, inverse) -> bytes\n\n"
                       "JPEG_CHROMA: forward, 3 planes (B, G, R) -> 4 planes (G, dB, dR, Q); inverse, 4 -> 3. "
                       "Height and width must be even.");
static PyObject *jpeg_chroma(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t height, width, n;
    int inverse;
    if (!PyArg_ParseTuple(args, "y*nnp", &view, &height, &width, &inverse)) return NULL;
    PyObject *result = NULL;
    if (!plane_shape(4, height, width, &n)) goto done;
    const Py_ssize_t in_planes = inverse ? 4 : 3, out_planes = inverse ? 3 : 4;
    if ((height | width) & 1 || view.len != in_planes * n) {
        PyErr_SetString(PyExc_ValueError, "JPEG_CHROMA: needs an even height and width and a matching buffer");
        goto done;
    }
    if (!inverse && !jpeg_inverse_table()) { /* with the GIL held: made once */
        PyErr_NoMemory();
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, out_planes * n);
    if (!result) goto done;
    int done_ok;
    Py_BEGIN_ALLOW_THREADS;
    done_ok = (inverse ? jpeg_inverse : jpeg_forward)((const uint8_t *)view.buf, height, width,
                                                      (uint8_t *)PyBytes_AS_STRING(result));
    Py_END_ALLOW_THREADS;
    if (!done_ok) {
        Py_CLEAR(result);
        PyErr_NoMemory();
    }
done:
    PyBuffer_Release(&view);
    return result;
}

/* ------------------------------------------------------------------------------------------- SSIM shrink */

/* The key selector's grey copy (agent/codec/ssim.py): every factor x factor block of a BGR (or grey) frame
   averaged, as the grey value 0.114 B + 0.587 G + 0.299 R (OpenCV's and ITU-R BT.601's weights) of the block's
   mean colour. Both steps are linear, so this is the exact area average of the grey frame; OpenCV's repeated
   halvings round to a byte at every step and read the frame twice as often (measured at 768 x 432 on frames
   not in cache: 0.31 ms against 0.17 for this one pass). The rows of a block are first added column by column
   into 16-bit sums (a loop compilers vectorise; 16 x 255 fits), then each block's columns. */

/* sums[i] = the sum of rows 0 .. count-1 (stride apart) at column i; restrict lets the loops vectorise. */
static void add_rows(uint16_t *restrict sums, const uint8_t *restrict top, Py_ssize_t stride, Py_ssize_t count,
                     Py_ssize_t len) {
    for (Py_ssize_t i = 0; i < len; i++) sums[i] = top[i];
    for (Py_ssize_t dy = 1; dy < count; dy++) {
        const uint8_t *restrict row = top + dy * stride;
        for (Py_ssize_t i = 0; i < len; i++) sums[i] = (uint16_t)(sums[i] + row[i]);
    }
}

/* Each block's grey from the column sums of its rows; inlined with a constant factor for the common 2 and 4. */
static inline __attribute__((always_inline)) void blocks_bgr(const uint16_t *restrict sums, float *restrict dst,
                                                             Py_ssize_t ow, Py_ssize_t factor, float wb, float wg,
                                                             float wr) {
    for (Py_ssize_t ox = 0; ox < ow; ox++) {
        const uint16_t *block = sums + ox * factor * 3;
        uint32_t b = 0, g = 0, r = 0;
        for (Py_ssize_t dx = 0; dx < factor; dx++) {
            b += block[3 * dx];
            g += block[3 * dx + 1];
            r += block[3 * dx + 2];
        }
        dst[ox] = wb * (float)b + wg * (float)g + wr * (float)r;
    }
}

/* Each block's grey from the column sums of its rows, one channel; inlined with a constant factor too. */
static inline __attribute__((always_inline)) void blocks_grey(const uint16_t *restrict sums, float *restrict dst,
                                                              Py_ssize_t ow, Py_ssize_t factor, float scale) {
    for (Py_ssize_t ox = 0; ox < ow; ox++) {
        uint32_t v = 0;
        for (Py_ssize_t dx = 0; dx < factor; dx++) v += sums[ox * factor + dx];
        dst[ox] = (float)v * scale;
    }
}

/* Every output row of grey_shrink: its rows' column sums, each block's grey, then (v - offset) * affine. */
PIXEL_CLONES static void shrink_rows(const uint8_t *image, Py_ssize_t width, Py_ssize_t channels,
                                     Py_ssize_t factor, Py_ssize_t oh, Py_ssize_t ow, uint16_t *sums,
                                     float *out, float offset, float affine) {
    const Py_ssize_t row_len = ow * factor * channels;
    const float scale = 1.0f / (float)(factor * factor);
    const float wb = 0.114f * scale, wg = 0.587f * scale, wr = 0.299f * scale;
    for (Py_ssize_t oy = 0; oy < oh; oy++) {
        const uint8_t *top = image + oy * factor * width * channels;
        add_rows(sums, top, width * channels, factor, row_len);
        float *restrict dst = out + oy * ow;
        if (channels == 3 && factor == 4)
            blocks_bgr(sums, dst, ow, 4, wb, wg, wr);
        else if (channels == 3 && factor == 2)
            blocks_bgr(sums, dst, ow, 2, wb, wg, wr);
        else if (channels == 3)
            blocks_bgr(sums, dst, ow, factor, wb, wg, wr);
        else if (factor == 4)
            blocks_grey(sums, dst, ow, 4, scale);
        else if (factor == 2)
            blocks_grey(sums, dst, ow, 2, scale);
        else
            blocks_grey(sums, dst, ow, factor, scale);
        if (offset != 0.0f || affine != 1.0f)
            for (Py_ssize_t ox = 0; ox < ow; ox++) dst[ox] = (dst[ox] - offset) * affine;
    }
}

PyDoc_STRVAR(grey_shrink_doc,
             "grey_shrink(image, height, width, channels, factor, offset=0, scale=1) -> bytes\n\n"
             "float32 grey of every factor x factor block of a C-contiguous (height, width, channels) uint8\n"
             "image (channels 1 or 3, BGR), (height // factor) x (width // factor), row-major; factor 1..16.\n"
             "Each value v is given as (v - offset) * scale, in float32 (a picture's Y to grey).");

static PyObject *grey_shrink(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t height, width, channels, factor;
    float offset = 0.0f, affine = 1.0f;
    if (!PyArg_ParseTuple(args, "y*nnnn|ff", &view, &height, &width, &channels, &factor, &offset, &affine))
        return NULL;
    /* Sizes bounded as the planes' are (plane_shape), so the products below fit a 32-bit size_t too. */
    if ((channels != 1 && channels != 3) || factor < 1 || factor > 16 || height < factor || width < factor ||
        height > (1 << 16) || width > (1 << 16) || (int64_t)height * (int64_t)width > ((int64_t)1 << 28) ||
        view.len != height * width * channels) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "grey_shrink: buffer size, shape and factor do not match");
        return NULL;
    }
    const Py_ssize_t oh = height / factor, ow = width / factor;
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)sizeof(float) * oh * ow);
    uint16_t *sums = malloc(sizeof(uint16_t) * (size_t)(ow * factor * channels));
    if (!result || !sums) {
        Py_XDECREF(result);
        free(sums);
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    float *out = (float *)PyBytes_AS_STRING(result);
    const uint8_t *image = view.buf;
    Py_BEGIN_ALLOW_THREADS;
    shrink_rows(image, width, channels, factor, oh, ow, sums, out, offset, affine);
    Py_END_ALLOW_THREADS;
    free(sums);
    PyBuffer_Release(&view);
    return result;
}

/* ----------------------------------------------------------------------------------------------- SSIM maps */

/* The key selector's SSIM (agent/codec/ssim.py) from the shrunk greys a (the key) and b (a frame): the Gaussian
   blurs of b, b^2 and ab and the formula, in one call. Only the region skimage averages is computed (every pixel
   whose window lies inside the image: taps / 2 from each edge), so no border rule is needed. Each blur is
   separable: down the columns for one output row, then along it, each product in float32 as numpy makes it and
   each sum over the taps in order, in float32 (as OpenCV's blur, up to its order of summation), so the result is
   the same on every machine (19.5 against 46 us with OpenCV's blurs for a 320x240 frame's 80x60 copy). */

#define SSIM_TERMS 3
#define SSIM_MAX_TAPS 31

/* Each map (full size, w wide) blurred over one output row of the valid region (the window's top row is top):
   col holds a map's column sums, out each map's row (nmaps x inner). Each output sums its taps in order; with
   the window's 11 taps known to the compiler the inner loop unrolls and the loop over columns vectorises. */
static inline __attribute__((always_inline)) void blur_row_with(const float *const *maps, int nmaps,
                                                                const float *g, const int taps, Py_ssize_t w,
                                                                Py_ssize_t top, float *restrict col,
                                                                float *restrict out) {
    const Py_ssize_t inner = w - (taps - 1);
    for (int t = 0; t < nmaps; t++) {
        const float *restrict m = maps[t] + top * w;
        float *restrict o = out + t * inner;
        for (Py_ssize_t i = 0; i < w; i++) {
            float s = g[0] * m[i];
            for (int k = 1; k < taps; k++) s += g[k] * m[k * w + i];
            col[i] = s;
        }
        for (Py_ssize_t i = 0; i < inner; i++) {
            float s = g[0] * col[i];
            for (int k = 1; k < taps; k++) s += g[k] * col[i + k];
            o[i] = s;
        }
    }
}

PIXEL_CLONES static void ssim_blur_row(const float *const *maps, int nmaps, const float *g, int taps,
                                       Py_ssize_t w, Py_ssize_t top, float *col, float *out) {
    if (taps == 11)
        blur_row_with(maps, nmaps, g, 11, w, top, col, out);
    else
        blur_row_with(maps, nmaps, g, taps, w, top, col, out);
}

/* out = x * y, element by element (the maps b^2, ab and a^2 are blurred as numpy's products). */
PIXEL_CLONES static void multiply(const float *restrict x, const float *restrict y, Py_ssize_t n,
                                  float *restrict out) {
    for (Py_ssize_t i = 0; i < n; i++) out[i] = x[i] * y[i];
}

/* Checks the shared arguments of ssim_key and ssim_score; 0 with an exception set when they do not fit. */
static int ssim_shape(const Py_buffer *kernel, Py_ssize_t height, Py_ssize_t width, int *taps) {
    const Py_ssize_t n = kernel->len / (Py_ssize_t)sizeof(float);
    if (kernel->len % (Py_ssize_t)sizeof(float) || n < 1 || n > SSIM_MAX_TAPS || n % 2 == 0 || height < n ||
        width < n || height > (1 << 16) || width > (1 << 16)) {
        PyErr_SetString(PyExc_ValueError, "ssim: kernel, buffer sizes and shape do not match");
        return 0;
    }
    *taps = (int)n;
    return 1;
}

PyDoc_STRVAR(ssim_key_doc,
             "ssim_key(a, kernel, height, width) -> bytes\n\n"
             "The key's maps mu_a, mu_a^2 and sigma_a^2 = blur(a^2) - mu_a^2 over the valid region, each a\n"
             "(height - taps + 1, width - taps + 1) float32 map, one after the other; a is a C-contiguous\n"
             "(height, width) float32 buffer, kernel the taps (odd, at most 31) as float32.");

static PyObject *ssim_key(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer a, kernel;
    Py_ssize_t height, width;
    if (!PyArg_ParseTuple(args, "y*y*nn", &a, &kernel, &height, &width)) return NULL;
    PyObject *result = NULL;
    float *scratch = NULL;
    int taps;
    if (!ssim_shape(&kernel, height, width, &taps)) goto done;
    if (a.len != (Py_ssize_t)sizeof(float) * height * width) {
        PyErr_SetString(PyExc_ValueError, "ssim: kernel, buffer sizes and shape do not match");
        goto done;
    }
    const Py_ssize_t inner_h = height - (taps - 1), inner = width - (taps - 1), n = inner_h * inner;
    result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)sizeof(float) * 3 * n);
    scratch = malloc(sizeof(float) * (size_t)(height * width + width + 2 * inner));
    if (!result || !scratch) {
        Py_CLEAR(result);
        PyErr_NoMemory();
        goto done;
    }
    float *mu = (float *)PyBytes_AS_STRING(result), *mu_sq = mu + n, *sigma_sq = mu + 2 * n;
    float *squares = scratch, *col = squares + height * width, *row = col + width;
    const float *maps[2] = {a.buf, squares};
    Py_BEGIN_ALLOW_THREADS;
    multiply(a.buf, a.buf, height * width, squares);
    for (Py_ssize_t y = 0; y < inner_h; y++) {
        ssim_blur_row(maps, 2, kernel.buf, taps, width, y, col, row);
        for (Py_ssize_t i = 0; i < inner; i++) {
            const float m = row[i], m2 = m * m;
            mu[y * inner + i] = m;
            mu_sq[y * inner + i] = m2;
            sigma_sq[y * inner + i] = row[inner + i] - m2;
        }
    }
    Py_END_ALLOW_THREADS;
done:
    free(scratch);
    PyBuffer_Release(&a);
    PyBuffer_Release(&kernel);
    return result;
}

PyDoc_STRVAR(ssim_score_doc,
             "ssim_score(a, b, key_maps, kernel, height, width, c1, c2) -> float\n\n"
             "The mean SSIM of b to a over the valid region: a and b C-contiguous (height, width) float32\n"
             "buffers, key_maps what ssim_key made of a.");

static PyObject *ssim_score(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer a, b, maps, kernel;
    Py_ssize_t height, width;
    float c1, c2;
    if (!PyArg_ParseTuple(args, "y*y*y*y*nnff", &a, &b, &maps, &kernel, &height, &width, &c1, &c2)) return NULL;
    PyObject *result = NULL;
    float *scratch = NULL;
    int taps;
    if (!ssim_shape(&kernel, height, width, &taps)) goto done;
    const Py_ssize_t inner_h = height - (taps - 1), inner = width - (taps - 1), n = inner_h * inner;
    if (a.len != (Py_ssize_t)sizeof(float) * height * width || b.len != a.len ||
        maps.len != (Py_ssize_t)sizeof(float) * 3 * n) {
        PyErr_SetString(PyExc_ValueError, "ssim: kernel, buffer sizes and shape do not match");
        goto done;
    }
    scratch = malloc(sizeof(float) * (size_t)(2 * height * width + width + SSIM_TERMS * inner + inner));
    if (!scratch) {
        PyErr_NoMemory();
        goto done;
    }
    const float *ma = maps.buf, *ma2 = ma + n, *sa2 = ma + 2 * n;
    float *squares = scratch, *products = squares + height * width, *col = products + height * width;
    float *row = col + width, *values = row + SSIM_TERMS * inner;
    const float *maps_b[SSIM_TERMS] = {b.buf, squares, products};
    const float *mb = row, *ebb = row + inner, *eab = row + 2 * inner;
    double total = 0.0;
    Py_BEGIN_ALLOW_THREADS;
    multiply(b.buf, b.buf, height * width, squares);
    multiply(a.buf, b.buf, height * width, products);
    for (Py_ssize_t y = 0; y < inner_h; y++) {
        ssim_blur_row(maps_b, SSIM_TERMS, kernel.buf, taps, width, y, col, row);
        /* Each pixel's value first (a loop the compiler vectorises), then the row's sum in four doubles. */
        const Py_ssize_t i0 = y * inner;
        for (Py_ssize_t x = 0; x < inner; x++) {
            const Py_ssize_t i = i0 + x;
            const float mu_b_sq = mb[x] * mb[x], mu_ab = mb[x] * ma[i];
            const float numerator = (2.0f * mu_ab + c1) * (2.0f * (eab[x] - mu_ab) + c2);
            const float denominator = (mu_b_sq + ma2[i] + c1) * (ebb[x] - mu_b_sq + sa2[i] + c2);
            values[x] = numerator / denominator;
        }
        double sums[4] = {0.0, 0.0, 0.0, 0.0};
        Py_ssize_t x = 0;
        for (; x + 3 < inner; x += 4)
            for (int k = 0; k < 4; k++) sums[k] += (double)values[x + k];
        for (; x < inner; x++) sums[0] += (double)values[x];
        total += (sums[0] + sums[1]) + (sums[2] + sums[3]);
    }
    Py_END_ALLOW_THREADS;
    result = PyFloat_FromDouble(total / (double)n);
done:
    free(scratch);
    PyBuffer_Release(&a);
    PyBuffer_Release(&b);
    PyBuffer_Release(&maps);
    PyBuffer_Release(&kernel);
    return result;
}
#undef SSIM_TERMS
#undef SSIM_MAX_TAPS

/* ---------------------------------------------------------------------------------------------- PackBits */

/* The near-lossless stages' quantisers (agent/codec/transforms.py defines them). RESIDUAL_Q over d = current -
   reference: the code sign(d) floor((|d| + T) / (2T + 1)) as a byte, and what the decoder adds back, code
   (2T + 1). QUANTIZE over the value x: the code floor((x + T) / (2T + 1)) and its reconstruction
   min(code (2T + 1), 255). Up to T = MAGIC_TOLERANCE (the encoder's settings stop at 32) the division is a
   multiply and a shift, floor(a / (2T + 1)) = (a magic) >> 16 for every a <= 255 + T, which quantiser_init
   checks value by value; the compiler vectorises that where it cannot vectorise a table lookup (a pets frame's
   RESIDUAL_QG 0.95 -> 0.19 ms with SSE2). Above it, tables (d + 255 and x index them). */
#define MAGIC_TOLERANCE 32
typedef struct {
    uint8_t code[511];
    int16_t back[511];
    uint8_t intra_code[256], intra_back[256];
    int16_t tolerance, step;
    uint16_t magic; /* 0: use the tables */
} Quantiser;

static void quantiser_init(Quantiser *q, int tolerance) {
    const int step = 2 * tolerance + 1;
    for (int d = -255; d <= 255; d++) {
        const int m = ((d < 0 ? -d : d) + tolerance) / step, code = d < 0 ? -m : m;
        q->code[d + 255] = (uint8_t)(int8_t)code;
        q->back[d + 255] = (int16_t)(code * step);
    }
    for (int x = 0; x < 256; x++) {
        const int code = (x + tolerance) / step, back = code * step;
        q->intra_code[x] = (uint8_t)code;
        q->intra_back[x] = (uint8_t)(back < 255 ? back : 255);
    }
    q->tolerance = (int16_t)tolerance;
    q->step = (int16_t)step;
    q->magic = tolerance <= MAGIC_TOLERANCE ? (uint16_t)(65536 / step + 1) : 0;
    for (int a = 0; q->magic && a <= 255 + tolerance; a++)
        if ((int)(((uint32_t)a * q->magic) >> 16) != a / step) q->magic = 0;
}

static inline uint8_t clamp_byte(int v) { return (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v)); }

/* One row of RESIDUAL_Q: codes and the clamped reconstruction (see Quantiser). */
static inline void quantise_residual_row(const uint8_t *restrict src, const uint8_t *restrict ref,
                                         uint8_t *restrict code, uint8_t *restrict back, Py_ssize_t w,
                                         const Quantiser *quant) {
    if (!quant->magic) {
        for (Py_ssize_t x = 0; x < w; x++) {
            const int d = (int)src[x] - (int)ref[x] + 255;
            code[x] = quant->code[d];
            back[x] = clamp_byte(ref[x] + quant->back[d]);
        }
        return;
    }
    const int16_t tolerance = quant->tolerance, step = quant->step;
    const uint16_t magic = quant->magic;
    for (Py_ssize_t x = 0; x < w; x++) {
        const int16_t d = (int16_t)(src[x] - ref[x]);
        const uint16_t a = (uint16_t)((d < 0 ? -d : d) + tolerance);
        const int16_t m = (int16_t)(((uint32_t)a * magic) >> 16), c = d < 0 ? (int16_t)-m : m;
        const int16_t v = (int16_t)(ref[x] + c * step);
        code[x] = (uint8_t)c;
        back[x] = (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
}

/* One row of QUANTIZE: codes and the reconstruction. */
static inline void quantise_values_row(const uint8_t *restrict src, uint8_t *restrict code, uint8_t *restrict back,
                                       Py_ssize_t w, const Quantiser *quant) {
    if (!quant->magic) {
        for (Py_ssize_t x = 0; x < w; x++) {
            code[x] = quant->intra_code[src[x]];
            back[x] = quant->intra_back[src[x]];
        }
        return;
    }
    const int16_t tolerance = quant->tolerance, step = quant->step;
    const uint16_t magic = quant->magic;
    for (Py_ssize_t x = 0; x < w; x++) {
        const int16_t c = (int16_t)(((uint32_t)(uint16_t)(src[x] + tolerance) * magic) >> 16), v = (int16_t)(c * step);
        code[x] = (uint8_t)c;
        back[x] = (uint8_t)(v > 255 ? 255 : v);
    }
}

/* RESIDUAL_QG and QUANTIZE_G (docs/wire-format.md, stages 9 and 10) for one row: G quantised (against the
   reference when there is one, else its values), B and R moved by G's error and clamped, then written as RCT's
   chroma of the reconstruction's move (or of the reconstruction, without a reference). row gets the coded
   (G code, B chroma, R chroma) planes, recon the reconstructed B, G, R. */
static inline void follow_g_row(const uint8_t *restrict cur, const uint8_t *restrict ref, size_t n, Py_ssize_t w,
                                const Quantiser *quant, uint8_t *restrict row, uint8_t *restrict recon) {
    const uint8_t *sb = cur, *sg = cur + n, *sr = cur + 2 * n;
    uint8_t *cb = row + w, *cr = row + 2 * w, *ob = recon, *og = recon + n, *or_ = recon + 2 * n;
    if (ref) {
        const uint8_t *rb = ref, *rg = ref + n, *rr = ref + 2 * n;
        quantise_residual_row(sg, rg, row, og, w, quant);
        for (Py_ssize_t x = 0; x < w; x++) {
            const int16_t g = og[x], error = (int16_t)(g - sg[x]), moved = (int16_t)(g - rg[x]);
            int16_t b = (int16_t)(sb[x] + error), r = (int16_t)(sr[x] + error);
            b = b < 0 ? 0 : (b > 255 ? 255 : b);
            r = r < 0 ? 0 : (r > 255 ? 255 : r);
            cb[x] = (uint8_t)(b - rb[x] - moved + 128);
            cr[x] = (uint8_t)(r - rr[x] - moved + 128);
            ob[x] = (uint8_t)b;
            or_[x] = (uint8_t)r;
        }
    } else {
        quantise_values_row(sg, row, og, w, quant);
        for (Py_ssize_t x = 0; x < w; x++) {
            const int16_t g = og[x], error = (int16_t)(g - sg[x]);
            int16_t b = (int16_t)(sb[x] + error), r = (int16_t)(sr[x] + error);
            b = b < 0 ? 0 : (b > 255 ? 255 : b);
            r = r < 0 ? 0 : (r > 255 ? 255 : r);
            cb[x] = (uint8_t)(b - g + 128);
            cr[x] = (uint8_t)(r - g + 128);
            ob[x] = (uint8_t)b;
            or_[x] = (uint8_t)r;
        }
    }
}

/* The pixel stages in one pass (docs/wire-format.md, stage 1, 2, 3, 9 or 10, then 4, then 5 or 11, in that
   order): the residual against a reference, exact (mod 256) or quantised, or without a reference the quantised
   values (with quant, both quantisers also write the reconstruction to recon), or with follow G quantised and
   B and R following it (stages 9 and 10, which bring their own colour transform); then RCT, then MED on the
   planes medmask names, each optional. Row by row over all planes at once, so nothing frame-sized is made on
   the way: 1080p in about a third of the time numpy's bands take. On x86-64 with glibc it is also built for
   AVX2 and picked at load time (32-byte vectors: 0.31 -> 0.23 ms for a pets frame's residual, RCT and MED);
   the baseline build is what runs elsewhere. */
PIXEL_CLONES
static void pixels_rows(const uint8_t *cur, const uint8_t *ref, Py_ssize_t channels, Py_ssize_t h, Py_ssize_t w,
                        int rct, int follow, const uint8_t *medmask, const uint8_t *flip, const Quantiser *quant,
                        uint8_t *out, uint8_t *recon, uint8_t *row /* C w */, uint8_t *medrows /* C 2 (w + 1) */) {
    const size_t n = (size_t)h * (size_t)w;
    memset(medrows, 0, (size_t)(2 * (w + 1) * channels));
    for (Py_ssize_t y = 0; y < h; y++) {
        if (follow) {
            const size_t at = (size_t)y * (size_t)w;
            follow_g_row(cur + at, ref ? ref + at : NULL, n, w, quant, row, recon + at);
        }
        for (Py_ssize_t k = 0; k < channels && !follow; k++) {
            const uint8_t *src = cur + k * n + y * w;
            uint8_t *dst = row + k * w;
            if (ref && quant) {
                quantise_residual_row(src, ref + k * n + y * w, dst, recon + k * n + y * w, w, quant);
            } else if (ref) {
                const uint8_t *r = ref + k * n + y * w;
                for (Py_ssize_t x = 0; x < w; x++) dst[x] = (uint8_t)(src[x] - r[x]);
            } else if (quant) {
                quantise_values_row(src, dst, recon + k * n + y * w, w, quant);
            } else {
                memcpy(dst, src, (size_t)w);
            }
        }
        if (rct) { /* (B, G, R) -> (G, B - G + 128, R - G + 128) */
            uint8_t *b = row, *g = row + w, *r = row + 2 * w;
            for (Py_ssize_t x = 0; x < w; x++) {
                const uint8_t gx = g[x], bx = b[x];
                g[x] = (uint8_t)(bx - gx + 128);
                b[x] = gx;
                r[x] = (uint8_t)(r[x] - gx + 128);
            }
            /* now row holds (G, B - G + 128, R - G + 128) in planes 0, 1, 2 */
        }
        for (Py_ssize_t k = 0; k < channels; k++) {
            uint8_t *dst = out + k * n + y * w;
            const uint8_t *src = row + k * w;
            if (!medmask[k]) {
                memcpy(dst, src, (size_t)w);
                continue;
            }
            med_row(src, dst, w, flip[k] ? 0x80 : 0, medrows + k * 2 * (w + 1), y);
        }
    }
}

PyDoc_STRVAR(pixels_doc,
             "pixels(planes, reference, rct, follow, med, signed, tolerance, channels, height, width)\n"
             "    -> (bytes, bytes | None)\n\n"
             "Residual (when reference is not None), RCT, MED on the planes whose byte in med is not 0, in one\n"
             "pass; with tolerance > 0 the residual is quantised, or without a reference the values are\n"
             "(QUANTIZE); with follow (3 planes, tolerance > 0, no rct) only G is, and B and R follow it\n"
             "(RESIDUAL_QG, QUANTIZE_G). Returns the coded planes, and the reconstruction when something was\n"
             "quantised (else None: it is the planes).");

static PyObject *pixels(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view, refview = {0}, medmask, flips;
    PyObject *refobj;
    int rct, follow, tolerance;
    Py_ssize_t channels, height, width, n;
    if (!PyArg_ParseTuple(args, "y*Oppy*y*innn", &view, &refobj, &rct, &follow, &medmask, &flips, &tolerance,
                          &channels, &height, &width))
        return NULL;
    PyObject *result = NULL, *coded = NULL, *recon = NULL;
    int have_ref = refobj != Py_None;
    if (have_ref && PyObject_GetBuffer(refobj, &refview, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&view);
        PyBuffer_Release(&medmask);
        PyBuffer_Release(&flips);
        return NULL;
    }
    if (!plane_shape(channels, height, width, &n)) goto done;
    if (view.len != channels * n || flips.len != channels || medmask.len != channels ||
        (have_ref && refview.len != view.len) || (rct && channels != 3)) {
        PyErr_SetString(PyExc_ValueError, "pixels: buffer sizes do not match the shape");
        goto done;
    }
    if (follow && (channels != 3 || rct || tolerance < 1)) {
        PyErr_SetString(PyExc_ValueError, "pixels: follow needs 3 planes, a tolerance and no rct");
        goto done;
    }
    if (tolerance < 0 || tolerance > 255) {
        PyErr_SetString(PyExc_ValueError, "pixels: a tolerance is 0..255");
        goto done;
    }
    coded = PyBytes_FromStringAndSize(NULL, channels * n);
    recon = tolerance ? PyBytes_FromStringAndSize(NULL, channels * n) : Py_NewRef(Py_None);
    if (!coded || !recon) goto done;
    uint8_t *row = malloc((size_t)(channels * width));
    uint8_t *medrows = malloc((size_t)(2 * (width + 1) * channels));
    Quantiser *quant = tolerance ? malloc(sizeof(Quantiser)) : NULL;
    if (!row || !medrows || (tolerance && !quant)) {
        free(row);
        free(medrows);
        free(quant);
        PyErr_NoMemory();
        goto done;
    }
    if (quant) quantiser_init(quant, tolerance);
    Py_BEGIN_ALLOW_THREADS;
    pixels_rows((const uint8_t *)view.buf, have_ref ? (const uint8_t *)refview.buf : NULL, channels, height, width,
                rct, follow, (const uint8_t *)medmask.buf, (const uint8_t *)flips.buf, quant,
                (uint8_t *)PyBytes_AS_STRING(coded), tolerance ? (uint8_t *)PyBytes_AS_STRING(recon) : NULL, row,
                medrows);
    Py_END_ALLOW_THREADS;
    free(row);
    free(medrows);
    free(quant);
    result = PyTuple_Pack(2, coded, recon);
done:
    Py_XDECREF(coded);
    Py_XDECREF(recon);
    PyBuffer_Release(&view);
    if (have_ref) PyBuffer_Release(&refview);
    PyBuffer_Release(&medmask);
    PyBuffer_Release(&flips);
    return result;
}

/* PackBits, one stream per row, byte for byte what agent/codec/packbits.py's numpy encoder emits (its
   docstring gives the rules): runs of 3+ are repeat packets, a run of 2 is one only between row edges and
   runs of 3+, literals gather the rest; packets hold at most 128 bytes, and a repeat run of 128k + 1 ends
   on 127 + 2. The numpy version spends ~4 ms on a 768×576 residual, most of the zstd path's time. */
static uint8_t *pack_literal(uint8_t *out, const uint8_t *src, Py_ssize_t len) {
    while (len > 0) {
        Py_ssize_t n = len > 128 ? 128 : len;
        *out++ = (uint8_t)(n - 1);
        memcpy(out, src, (size_t)n);
        out += n;
        src += n;
        len -= n;
    }
    return out;
}

static uint8_t *pack_repeat(uint8_t *out, uint8_t value, Py_ssize_t len) {
    while (len > 0) {
        Py_ssize_t n = len > 128 ? 128 : len;
        if (len == 129) n = 127; /* never leave a 1-byte tail */
        *out++ = (uint8_t)(257 - n);
        *out++ = value;
        len -= n;
    }
    return out;
}

static uint8_t *pack_row(uint8_t *out, const uint8_t *row, Py_ssize_t w) {
    Py_ssize_t literal_start = 0, i = 0;
    Py_ssize_t before = 0; /* length of the run that ended at i (0 at the row start) */
    while (i < w) {
        Py_ssize_t j = i + 1;
        while (j < w && row[j] == row[i]) j++;
        Py_ssize_t run = j - i, after = 0;
        int repeat = run >= 3;
        if (run == 2) {
            if (j < w) {
                Py_ssize_t k = j + 1;
                while (k < w && row[k] == row[j] && k - j < 3) k++;
                after = k - j;
            }
            repeat = (i == 0 || before >= 3) && (j == w || after >= 3);
        }
        if (repeat) {
            out = pack_literal(out, row + literal_start, i - literal_start);
            out = pack_repeat(out, row[i], run);
            literal_start = j;
        }
        before = run;
        i = j;
    }
    return pack_literal(out, row + literal_start, w - literal_start);
}

PyDoc_STRVAR(packbits_doc, "packbits(data, row_bytes) -> bytes\n\n"
                           "PackBits each row_bytes-long row of data on its own (as agent.codec.packbits).");
static PyObject *packbits_encode(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view;
    Py_ssize_t w;
    if (!PyArg_ParseTuple(args, "y*n", &view, &w)) return NULL;
    PyObject *result = NULL;
    if (w < 1 || view.len % w) {
        PyErr_SetString(PyExc_ValueError, "PackBits: the data is not a whole number of rows");
        goto done;
    }
    Py_ssize_t rows = view.len / w;
    /* Worst case: all literal, one header per 128 bytes, at least one per row. */
    size_t bound = (size_t)view.len + (size_t)rows * (size_t)((w + 127) / 128) + 1;
    uint8_t *out = malloc(bound);
    if (!out) {
        PyErr_NoMemory();
        goto done;
    }
    uint8_t *end = out;
    Py_BEGIN_ALLOW_THREADS;
    for (Py_ssize_t r = 0; r < rows; r++) end = pack_row(end, (const uint8_t *)view.buf + r * w, w);
    Py_END_ALLOW_THREADS;
    result = PyBytes_FromStringAndSize((const char *)out, end - out);
    free(out);
done:
    PyBuffer_Release(&view);
    return result;
}

/* ----------------------------------------------------------------------------------- QUANTIZE_Y, RESIDUAL_QY */

/* The encoder of YUV420's Y quantisers (docs/wire-format.md): each Y sample goes to one of the two points of the
   decoder's lattice around it (reference + q * step, or q * step without a reference, clamped to 0..255), the
   nearer one unless its luma term (the conversion's floor((Y - 16) * 76312 / 65536)) is more than tolerance
   from the sample's, then the other, which the step guarantees is within it. So every B, G and R sample the
   decoder converts is within tolerance of the captured frame's, with steps about 1.7 x tolerance instead of
   the 2t + 1 a plain quantiser of Y could use (4 instead of 3 at T = 2). Halfway between two points that are
   both within it, a residual takes the smaller code and an intra sample the lower point (transforms.quantize_luma
   says why). Codes are int8 with a reference (as RESIDUAL_Q's), unsigned without; agent/codec/transforms.py has
   the same in numpy. */
static inline int16_t luma_term(int16_t v) { /* ((v - 16) * 76312) >> 16, as _yuv.c's pmulhw computes it */
    return (int16_t)(((int32_t)(int16_t)((v - 16) * 8) * 9539) >> 16);
}

static void luma_quantise(const uint8_t *in, const uint8_t *ref, int16_t signed_codes, uint8_t *codes,
                          uint8_t *recon, Py_ssize_t n, int step, int tolerance) {
    /* 16-bit arithmetic only, no table and no branch, so that the compiler vectorises it 8 or 16 samples at a
     * time: floor(d / step) as ((d + bias) * magic) >> 16, exact for 0 <= d + bias < 1024 and step < 64 (the
     * multiply's error stays under 1/64 of a step; luma_step's steps are at most 55). */
    const uint16_t bias = (uint16_t)((255 / step + 2) * step), magic = (uint16_t)((65536 + step - 1) / step);
    const int16_t base = (int16_t)(bias / step), s = (int16_t)step, t = (int16_t)tolerance;
    for (Py_ssize_t i = 0; i < n; i++) {
        int16_t y = in[i], r = ref[i];
        uint16_t x = (uint16_t)(y - r + bias);
        int16_t q0 = (int16_t)((uint16_t)(((uint32_t)x * magic) >> 16) - base);
        int16_t c0 = (int16_t)(r + q0 * s), c1 = (int16_t)(c0 + s);
        int16_t k0 = c0 < 0 ? 0 : c0, k1 = c1 > 255 ? 255 : c1; /* c0 <= y <= 255 and c1 > y >= 0 */
        int16_t ty = luma_term(y);
        int16_t e0 = (int16_t)(ty - luma_term(k0)), e1 = (int16_t)(luma_term(k1) - ty); /* both >= 0 */
        int16_t nearer = (int16_t)((y - k0 < k1 - y) | ((y - k0 == k1 - y) & ((q0 >= 0) | (signed_codes == 0))));
        int16_t low = (int16_t)((e0 <= t) & ((e1 > t) | nearer));
        low |= (int16_t)(signed_codes & (q0 >= 127)); /* int8: only step 2, d = 255, whose lower point is within 1 */
        codes[i] = (uint8_t)(q0 + 1 - low);
        recon[i] = (uint8_t)(low ? k0 : k1);
    }
}

PyDoc_STRVAR(luma_doc, "luma(samples, reference, step, tolerance) -> (codes, reconstruction)\n\n"
                       "QUANTIZE_Y's (reference None) or RESIDUAL_QY's Y codes of a uint8 buffer, and what the "
                       "decoder rebuilds.");
static PyObject *luma(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer view, refview = {0};
    PyObject *refobj;
    int step, tolerance;
    if (!PyArg_ParseTuple(args, "y*Oii", &view, &refobj, &step, &tolerance)) return NULL;
    PyObject *result = NULL, *codes = NULL, *recon = NULL;
    int have_ref = refobj != Py_None;
    if (have_ref && PyObject_GetBuffer(refobj, &refview, PyBUF_SIMPLE) < 0) goto done;
    if (step < 2 || step > 255 || tolerance < 1) {
        PyErr_Format(PyExc_ValueError, "luma: bad step %d or tolerance %d", step, tolerance);
        goto done;
    }
    if (have_ref && refview.len != view.len) {
        PyErr_SetString(PyExc_ValueError, "luma: reference size does not match");
        goto done;
    }
    codes = PyBytes_FromStringAndSize(NULL, view.len);
    recon = PyBytes_FromStringAndSize(NULL, view.len);
    if (!codes || !recon) goto done;
    /* Without a reference the lattice is q * step: the same loop against zeros (no branch in it). */
    uint8_t *zeros = have_ref ? NULL : calloc((size_t)view.len + 1, 1);
    if (!have_ref && !zeros) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS;
    luma_quantise((const uint8_t *)view.buf, have_ref ? (const uint8_t *)refview.buf : zeros, (int16_t)have_ref,
                  (uint8_t *)PyBytes_AS_STRING(codes), (uint8_t *)PyBytes_AS_STRING(recon), view.len, step,
                  tolerance);
    Py_END_ALLOW_THREADS;
    free(zeros);
    result = PyTuple_Pack(2, codes, recon);
done:
    Py_XDECREF(codes);
    Py_XDECREF(recon);
    if (have_ref && refview.obj) PyBuffer_Release(&refview);
    PyBuffer_Release(&view);
    return result;
}

/* ------------------------------------------------------------------------------------------ CRC-32 shift */

/* zlib's CRC-32 (reflected, polynomial 0xEDB88320) as arithmetic modulo its polynomial, as zlib's own
   crc32_combine does it: crc32(A + B) = crc_shift(crc32(A), len(B)) ^ crc32(B). What this buys is the CRC of any
   stretch of a long buffer from the CRCs of two of its prefixes, in time independent of the stretch's length: a
   damaged .cctv file's scan tests a candidate record's checksum that way (agent/codec/crc.py). */
#define CRC_POLY 0xedb88320u

static uint32_t crc_x2n[32]; /* x^(2^k) modulo the polynomial */

static uint32_t crc_multmodp(uint32_t a, uint32_t b) {
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0) break;
        }
        m >>= 1;
        b = b & 1 ? (b >> 1) ^ CRC_POLY : b >> 1;
    }
    return p;
}

static void crc_tables(void) {
    uint32_t p = 1u << 30; /* x^1 */
    crc_x2n[0] = p;
    for (int k = 1; k < 32; k++) crc_x2n[k] = p = crc_multmodp(p, p);
}

PyDoc_STRVAR(crc_shift_doc, "crc_shift(crc, nbytes) -> int\n\n"
                            "crc32(A + B) == crc_shift(crc32(A), len(B)) ^ crc32(B), for zlib's CRC-32.");

static PyObject *crc_shift(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long crc;
    unsigned long long n;
    if (!PyArg_ParseTuple(args, "kK", &crc, &n)) return NULL;
    uint32_t p = 1u << 31; /* x^0; the shift is by x^(8n): the exponent's bits from 2^3 on */
    for (unsigned k = 3; n; n >>= 1, k++)
        if (n & 1) p = crc_multmodp(crc_x2n[k & 31], p);
    return PyLong_FromUnsignedLong(crc_multmodp(p, (uint32_t)crc));
}

static PyMethodDef methods[] = {
    {"crc_shift", crc_shift, METH_VARARGS, crc_shift_doc},
    {"luma", luma, METH_VARARGS, luma_doc},
    {"encode", ctx_encode, METH_VARARGS, encode_doc},
    {"cost", ctx_cost, METH_VARARGS, cost_doc},
    {"bands", ctx_bands, METH_VARARGS, bands_doc},
    {"decode", ctx_decode, METH_VARARGS, decode_doc},
    {"med", med_forward, METH_VARARGS, med_doc},
    {"unmed", med_inverse, METH_VARARGS, unmed_doc},
    {"packbits", packbits_encode, METH_VARARGS, packbits_doc},
    {"pixels", pixels, METH_VARARGS, pixels_doc},
    {"grey_shrink", grey_shrink, METH_VARARGS, grey_shrink_doc},
    {"ssim_key", ssim_key, METH_VARARGS, ssim_key_doc},
    {"ssim_score", ssim_score, METH_VARARGS, ssim_score_doc},
    {"blocks", blocks, METH_VARARGS, blocks_doc},
    {"jpeg", jpeg_chroma, METH_VARARGS, jpeg_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "agent.codec._native", "The CTX entropy stage and MED (see docs/wire-format.md).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    init_tables();
    jpeg_tables();
    crc_tables();
    return PyModule_Create(&module);
}
