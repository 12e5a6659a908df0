"""Synthesizable Verilog-2005 for the systolic array that :mod:`accel_sim.pe_array` steps in Python.

The point is an independent, cycle-exact implementation: the hardware walks the folds, skews
the operands, moves them through PE registers, detects when a fold has drained and, for gated
layers, decides the gates itself, so its cycle count and outputs can be compared with the
Python model and the closed forms.  Timing follows the pe_array docstring exactly:

* OS: slot t reaches PE(r, c) at fold cycle r + c + t (operands enter on the left and top
  edges and move right / down); the fold ends in the cycle the last slot reaches PE(R-1, C-1),
  its accumulators then move into an output shift chain that leaves through the bottom edge
  while the next fold computes; after the last fold of a pass the chain drains (R cycles).
* WS / IS: R preload cycles shift the stationary tile in from the top edge (row R-1 first),
  then slot t enters row r at fold cycle R + r + t and moves right, partial sums move down,
  and the output unit adds the bottom PE's sum into the psum buffer in the same cycle.

Every fold streams through the whole physical array; a fold ends when its feeders are done and
no slot is left in the array (drain detect), so fold length is a property of the datapath, not
a programmed constant.  Folds and tiles without live work are skipped without spending a cycle.

Gated layers (OS / WS) run the base pass with a shared (``packed``) stream, then
``cfg_glat`` idle cycles, then the conditional pass with per-column compacted lists
(``column``: each column gathers its own operands) or a shared stream over the union of the
column tile's active pixels (``packed``), adding onto the stored base partial sums.  The gate
unit compares every base partial sum with its filter's threshold as it is written
(``psum > thr[n]``; the last write of an output decides), and the compaction unit turns the
gate bits into the active lists on the fly (prefix count + select: list entry i of a column
is the pixel whose gate bit is set with exactly i set bits before it).  IS is dense only.
Dense runs are the base pass with one partition (``cfg_p = 1``, ``cfg_kb = K``).

Layer shape and gating are run-time inputs (``cfg_*``) bounded by the buffer sizes, so one
build serves many random layers.  The buffers are register files (``cg_buf_*`` modules, one
per buffer, so synthesis reports them separately) that the host loads through ``ld_*`` and
reads back through ``dump_*``; the design has no ``initial`` blocks.
"""
from __future__ import annotations

from dataclasses import dataclass

from accel_sim.cost import ACC_BITS, WORD_BITS

DATAFLOWS = ("os", "ws", "is")
OPERAND_BITS = WORD_BITS["int8"]   # the RTL has int8 operands and ACC_BITS-wide accumulators


def _log2(x: int) -> int:
    return max(1, (x - 1).bit_length())


@dataclass(frozen=True)
class Design:
    """One RTL build: array shape, dataflow, and the buffer bounds of the layers it can run."""

    rows: int
    cols: int
    dataflow: str = "ws"
    gated: bool = True   # gate unit, compaction and conditional pass (os / ws)
    m_max: int = 16      # output pixels (powers of two)
    n_max: int = 16      # filters
    k_max: int = 16      # reduction rows
    p_max: int = 4       # gate partitions

    def __post_init__(self) -> None:
        if self.dataflow not in DATAFLOWS:
            raise ValueError(f"dataflow: got {self.dataflow!r}; allowed: {', '.join(DATAFLOWS)}")
        if self.gated and self.dataflow == "is":
            raise ValueError("gated RTL covers os and ws; is is dense only")
        if self.rows < 1 or self.cols < 1:
            raise ValueError(f"array must be at least 1 x 1, got {self.rows} x {self.cols}")
        for name in ("m_max", "n_max", "k_max"):
            v = getattr(self, name)
            if v < 2 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 2, got {v}")
        if not 1 <= self.p_max <= 8:
            raise ValueError(f"p_max must be 1..8, got {self.p_max}")

    @property
    def name(self) -> str:
        kind = "gated" if self.gated else "dense"
        return f"{self.dataflow}_{self.rows}x{self.cols}_{kind}_m{self.m_max}n{self.n_max}k{self.k_max}p{self.p_max}"

    # bit widths
    mw = property(lambda s: _log2(s.m_max))
    nw = property(lambda s: _log2(s.n_max))
    kw = property(lambda s: _log2(s.k_max))
    pq = property(lambda s: _log2(s.p_max))
    xw = property(lambda s: _log2(max(s.m_max, s.n_max, s.k_max) + max(s.rows, s.cols) + 1) + 1)
    tiles = property(lambda s: -(-(s.m_max if s.dataflow == "is" else s.n_max) // s.cols))
    tw = property(lambda s: _log2(s.tiles + 1))
    rw = property(lambda s: _log2(s.rows + 1))
    ld_width = property(lambda s: max(s.mw + s.kw, s.kw + s.nw, s.mw + s.nw))

    def a_addr(self, m: int, k: int) -> int:
        return m << self.kw | k

    def b_addr(self, k: int, n: int) -> int:
        return k << self.nw | n

    def p_addr(self, m: int, n: int) -> int:
        return m << self.nw | n


class _Buf:
    """A register-file buffer with as many async read ports and sync write ports as needed."""

    def __init__(self, name: str, width: int, aw: int):
        self.name, self.width, self.aw = name, width, aw
        self.reads: list[str] = []
        self.writes: list[tuple[str, str, str]] = []

    def read(self, addr: str) -> str:
        self.reads.append(addr)
        return f"{self.name}_rd{len(self.reads) - 1}"

    def write(self, we: str, addr: str, data: str) -> None:
        self.writes.append((we, addr, data))

    def module(self) -> str:
        w, aw, nr, nwr = self.width, self.aw, max(1, len(self.reads)), len(self.writes)
        return f"""
module cg_buf_{self.name} (input clk, input [{nwr - 1}:0] we, input [{nwr * aw - 1}:0] waddr,
    input [{nwr * w - 1}:0] wdata, input [{nr * aw - 1}:0] raddr, output [{nr * w - 1}:0] rdata);
  reg [{w - 1}:0] mem [0:{(1 << aw) - 1}];
  integer i;
  always @(posedge clk)
    for (i = 0; i < {nwr}; i = i + 1)
      if (we[i]) mem[waddr[i*{aw} +: {aw}]] <= wdata[i*{w} +: {w}];
  genvar g;
  generate for (g = 0; g < {nr}; g = g + 1) begin : rd
    assign rdata[g*{w} +: {w}] = mem[raddr[g*{aw} +: {aw}]];
  end endgenerate
endmodule
"""

    def instance(self, out: "_Writer") -> None:
        w, aw = self.width, self.aw
        reads = self.reads or ["0"]
        for i, addr in enumerate(reads):
            out.wire(f"{self.name}_ra{i}", aw, addr)
            out.wire(f"{self.name}_rd{i}", w, signed=True)
        for i, (we, addr, data) in enumerate(self.writes):
            out.wire(f"{self.name}_we{i}", 1, we)
            out.wire(f"{self.name}_wa{i}", aw, addr)
            out.wire(f"{self.name}_wd{i}", w, data)
        cat = lambda fmt, n: "{" + ", ".join(fmt.format(i) for i in reversed(range(n))) + "}"  # noqa: E731
        nr, nwr = len(reads), len(self.writes)
        out.body.append(
            f"  cg_buf_{self.name} u_{self.name} (.clk(clk), .we({cat(self.name + '_we{}', nwr)}), "
            f".waddr({cat(self.name + '_wa{}', nwr)}), .wdata({cat(self.name + '_wd{}', nwr)}), "
            f".raddr({cat(self.name + '_ra{}', nr)}), .rdata({cat(self.name + '_rd{}', nr)}));")


class _Writer:
    """Declarations first, then logic (Verilog-2005 wants names declared before use)."""

    def __init__(self):
        self.decl: list[str] = []
        self.body: list[str] = []

    @staticmethod
    def _range(width: int) -> str:
        return f"[{width - 1}:0] "

    def wire(self, name: str, width: int, expr: str | None = None, signed: bool = False) -> str:
        sg = "signed " if signed else ""
        self.decl.append(f"  wire {sg}{self._range(width)}{name};")
        if expr is not None:
            self.body.append(f"  assign {name} = {expr};")
        return name

    def reg(self, name: str, width: int, signed: bool = False) -> str:
        sg = "signed " if signed else ""
        self.decl.append(f"  reg {sg}{self._range(width)}{name};")
        return name

    def line(self, text: str) -> None:
        self.body.append(text)


PE_WS = """
// One weight/input-stationary PE: the stationary operand shifts in from the top during
// preload; the streamed operand moves right; the partial sum moves down.
module cg_pe_ws (input clk, input load_w, input run,
    input signed [7:0] w_in, input signed [7:0] a_in, input signed [31:0] p_in,
    output reg signed [7:0] w, output reg signed [7:0] a, output reg signed [31:0] p,
    output signed [31:0] p_next);
  wire signed [15:0] prod = a_in * w;
  assign p_next = p_in + prod;
  always @(posedge clk) begin
    if (load_w) w <= w_in;
    if (run) begin a <= a_in; p <= p_next; end
  end
endmodule
"""

PE_OS = """
// One output-stationary PE: operands move right / down, the PE accumulates, and at fold end
// the accumulator moves into this PE's stage of the output shift chain.
module cg_pe_os (input clk, input clr, input run, input en, input last, input shift,
    input signed [7:0] a_in, input signed [7:0] b_in, input signed [31:0] ch_in,
    output reg signed [7:0] a, output reg signed [7:0] b, output reg signed [31:0] ch);
  reg signed [31:0] acc;
  wire signed [15:0] prod = a_in * b_in;
  wire signed [31:0] acc_next = en ? acc + prod : acc;
  always @(posedge clk) begin
    if (clr) acc <= 32'sd0;
    else if (run) begin a <= a_in; b <= b_in; acc <= last ? 32'sd0 : acc_next; end
    if (run && last) ch <= acc_next;
    else if (shift) ch <= ch_in;
  end
endmodule
"""


def _functions(d: Design) -> str:
    """Combinational helpers: partition-set row lookup, partition popcount, gate class."""
    kw, pq, xw, pm = d.kw, d.pq, d.xw, d.p_max
    return f"""
  // j-th reduction row of the partitions in pm (each kb rows): {{valid, partition, row}}
  function [{kw + pq + 1}:0] kidx(input [{pm - 1}:0] pm, input [{xw - 1}:0] j, input [{kw}:0] kb);
    integer q; reg [{xw}:0] base; reg found; reg [{pq - 1}:0] qq; reg [{kw}:0] kk;
    begin
      base = 0; found = 0; qq = 0; kk = 0;
      for (q = 0; q < {pm}; q = q + 1)
        if (pm[q]) begin
          if (!found && j >= base && j < base + kb) begin found = 1; qq = q; kk = q * kb + (j - base); end
          base = base + kb;
        end
      kidx = {{found, qq, kk}};
    end
  endfunction
  function [{pq}:0] popp(input [{pm - 1}:0] bits);
    integer q;
    begin popp = 0; for (q = 0; q < {pm}; q = q + 1) popp = popp + bits[q]; end
  endfunction
  // gate class of filter f: its filter group when the base path is grouped, else 0
  function [{pq - 1}:0] fcls(input [{d.nw}:0] f, input [{d.nw}:0] npg, input [3:0] p, input grouped);
    integer q;
    begin fcls = 0; if (grouped) for (q = 1; q < {pm}; q = q + 1) if (q < p && f >= q * npg) fcls = q; end
  endfunction
"""


def _prefix(v: _Writer, bits: str, size: int, mw: int) -> str:
    """Declare ``pr_<bits>_<m>``, the running count of set bits before each position (the
    compaction unit's prefix sums); returns the expression of the total count."""
    for m in range(size):
        v.wire(f"pr_{bits}_{m}", mw + 1, f"{mw + 1}'d0" if m == 0 else f"pr_{bits}_{m - 1} + {bits}[{m - 1}]")
    return f"pr_{bits}_{size - 1} + {bits}[{size - 1}]"


def _feed(v: _Writer, name: str, valid: str, buf, addr: str) -> None:
    """An 8-bit operand wire: the buffer word at ``addr`` where ``valid`` holds, else zero."""
    v.wire(name, 8, f"{valid} ? {buf.read(addr)} : 8'sd0", signed=True)


def _pick(v: _Writer, bits: str, size: int, mw: int, name: str, index: str) -> None:
    """Compaction select: ``name`` = {found, pixel} of list entry ``index`` of ``bits``, the
    pixel whose bit is set with exactly ``index`` set bits before it (one compare per pixel)."""
    hits = [v.wire(f"{name}_h{m}", 1, f"{bits}[{m}] && {pos} == {index}")
            for m, pos in ((m, f"pr_{bits}_{m}") for m in range(size))]
    pix = " | ".join(f"({{{mw}{{{h}}}}} & {mw}'d{m})" for m, h in enumerate(hits) if m)
    v.wire(name, mw + 1, f"{{{' | '.join(hits)}, {pix or f'{mw}' + chr(39) + 'd0'}}}")


def _rows_pick(v: _Writer, bits: str, size: int, mw: int, xw: int, rows: int, name: str) -> None:
    """``{name}_{r}`` = list entry i0 + r of ``bits`` for every array row r (OS: the pixels of
    a fold); position of each pixel in the fold is its prefix count minus i0."""
    for m in range(size):
        v.wire(f"{name}_pos{m}", xw + 1, f"pr_{bits}_{m} - i0")
    for r in range(rows):
        hits = [v.wire(f"{name}_{r}_h{m}", 1, f"{bits}[{m}] && {name}_pos{m} == {r}") for m in range(size)]
        pix = " | ".join(f"({{{mw}{{{h}}}}} & {mw}'d{m})" for m, h in enumerate(hits) if m)
        v.wire(f"{name}_{r}", mw + 1, f"{{{' | '.join(hits)}, {pix or f'{mw}' + chr(39) + 'd0'}}}")


@dataclass(frozen=True)
class _Plan:
    """What the sections of :func:`emit` read: the design, its bit widths and its buffers."""

    d: Design
    R: int
    C: int
    mw: int
    nw: int
    kw: int
    pq: int
    xw: int
    tw: int
    rw: int
    mm: int
    nm: int
    pm: int
    nt: int
    os_: bool
    is_: bool
    gated: bool
    bufA: _Buf
    bufB: _Buf
    bufP: _Buf
    bufT: _Buf
    rc: list[tuple[int, int]]
    last_pe: tuple[int, int]


def _sequencer_state(v: _Writer, p: _Plan) -> None:
    """Sequencer registers and the per-tile validity vectors."""
    xw, tw, rw, mm, nm, pm, nt, gated = p.xw, p.tw, p.rw, p.mm, p.nm, p.pm, p.nt, p.gated
    v.reg("state", 3)
    v.reg("tj", tw)
    v.reg("i0", xw)
    v.reg("pc", rw)
    v.reg("x", xw)
    v.reg("gc", 8)
    v.reg("cyc", 32)
    v.wire("run", 1, "state == S_RUN")
    if gated:
        v.reg("pass", 1)
        v.reg("G", nm * mm)        # gate bits, filter-major: G[n*M_MAX + m]
        v.reg("gnext", nm * mm)
    else:
        v.wire("pass", 1, "1'b0")
    v.wire("cm", 1, "pass & cfg_colmode" if gated else "1'b0")
    v.wire("mvalid", mm)
    for m in range(mm):
        v.line(f"  assign mvalid[{m}] = cfg_m > {m};")
    v.wire("allp", pm)
    for q in range(pm):
        v.line(f"  assign allp[{q}] = cfg_p > {q};")
    v.wire("extent", xw + 1)
    v.wire("tlen", xw + 1)
    v.wire("last", 1)
    v.wire("bany", nt)
    v.wire("cany", nt)


def _tile_columns(v: _Writer, p: _Plan) -> None:
    """Which columns (filters or pixels) the current tile covers, and the next live tile of each pass."""
    C, mw, nw, pq, xw, tw, mm, nm, pm, nt, os_, is_, gated = (
        p.C, p.mw, p.nw, p.pq, p.xw, p.tw, p.mm, p.nm, p.pm, p.nt, p.os_, p.is_, p.gated)
    if is_:
        v.wire("m0", xw + 1, f"tj * {C}")
        for c in range(C):
            v.wire(f"colv_{c}", 1, f"m0 + {c} < cfg_m")
        for j in range(nt):
            v.line(f"  assign bany[{j}] = {j * C} < cfg_m;")
        v.line("  assign cany = 0;")
        v.line("  assign extent = cfg_k;")
        v.line("  assign tlen = cfg_n;")
    else:
        v.wire("n0", xw + 1, f"tj * {C}")
        for j in range(nt):
            v.line(f"  assign bany[{j}] = {j * C} < cfg_n;")
            if gated:
                cols = [j * C + c for c in range(C) if j * C + c < nm]
                v.line(f"  assign cany[{j}] = " + " | ".join(f"(|gnext[{n * mm} +: {mm}])" for n in cols) + ";")
        if not gated:
            v.line("  assign cany = 0;")
        for c in range(C):
            v.wire(f"flt_{c}", xw + 1, f"n0 + {c}")
            v.wire(f"colv_{c}", 1, f"flt_{c} < cfg_n")
            if gated:
                v.wire(f"cls_{c}", pq, f"fcls(flt_{c}, cfg_npg, cfg_p, cfg_grouped)")
                v.wire(f"bpm_{c}", pm, f"cfg_grouped ? (1 << cls_{c}) : 1")
                v.wire(f"pm_{c}", pm, f"pass ? (allp & ~bpm_{c}) : bpm_{c}")
                v.wire(f"nb_{c}", mm, f"!colv_{c} ? 0 : pass ? G[flt_{c}[{nw - 1}:0] * {mm} +: {mm}] : mvalid")
            else:
                v.wire(f"pm_{c}", pm, "1")
                v.wire(f"nb_{c}", mm, f"colv_{c} ? mvalid : 0")
            v.wire(f"live_{c}", 1, f"|nb_{c}")
            v.wire(f"len_{c}", mw + 1, _prefix(v, f"nb_{c}", mm, mw))
            v.wire(f"mx_{c}", mw + 1, f"len_{c}" if c == 0 else f"len_{c} > mx_{c - 1} ? len_{c} : mx_{c - 1}")
        v.wire("U", mm, " | ".join(f"nb_{c}" for c in range(C)))          # union of the tile's needed pixels
        v.wire("pmt", pm, " | ".join(f"({{{pm}{{live_{c}}}}} & pm_{c})" for c in range(C)))
        v.wire("ssize", xw + 1, "popp(pmt) * cfg_kb")                       # shared reduction rows
        v.wire("csize", xw + 1, "(cfg_p - 1) * cfg_kb")                     # a column's own cond rows
        v.wire("ucnt", mw + 1, _prefix(v, "U", mm, mw))
        v.wire("maxlen", mw + 1, f"mx_{C - 1}")
        if os_:
            v.line("  assign extent = cm ? maxlen : ucnt;")
            v.line("  assign tlen = cm ? csize : ssize;")
        else:
            v.line("  assign extent = cm ? csize : ssize;")
            v.line("  assign tlen = cm ? maxlen : ucnt;")

    # next live tile of this pass, first live tile of the conditional pass
    v.wire("tlive", nt, "pass ? cany : bany")
    v.reg("nt_f", 1)
    v.reg("nt_j", tw)
    v.reg("fc_f", 1)
    v.reg("fc_j", tw)
    v.decl.append("  integer jt;")
    v.line(f"""  always @* begin
    nt_f = 0; nt_j = 0; fc_f = 0; fc_j = 0;
    for (jt = {nt - 1}; jt >= 0; jt = jt - 1) begin
      if (tlive[jt] && jt > tj) begin nt_f = 1; nt_j = jt; end
      if (cany[jt]) begin fc_f = 1; fc_j = jt; end
    end
  end""")


def _slot_tags(v: _Writer, p: _Plan) -> None:
    """Slot valid/id tags travelling through the array with the stream skew."""
    xw, os_, rc, last_pe = p.xw, p.os_, p.rc, p.last_pe
    # sv/sid: slot valid / id.  WS, IS: enters at PE(0,0), moves down column 0 and right
    # along the rows.  OS: moves right along row 0 and down every column.  Both put slot t at
    # PE(r, c) at stream cycle r + c + t, the skew of the pe_array model.
    for r, c in rc:
        v.reg(f"sv_{r}_{c}", 1)
        v.reg(f"sid_{r}_{c}", xw)
        v.wire(f"svn_{r}_{c}", 1)
        v.wire(f"sidn_{r}_{c}", xw)

        def src(r=r, c=c):
            if (r, c) == (0, 0):
                return None
            if os_:
                return (r, c - 1) if r == 0 else (r - 1, c)
            return (r - 1, c) if c == 0 else (r, c - 1)

        s = src()
        if s is None:
            v.line("  assign svn_0_0 = x < tlen;")
            v.line("  assign sidn_0_0 = x;")
        else:
            v.line(f"  assign svn_{r}_{c} = sv_{s[0]}_{s[1]};")
            v.line(f"  assign sidn_{r}_{c} = sid_{s[0]}_{s[1]};")
    others = [f"svn_{r}_{c}" for r, c in rc if (r, c) != last_pe]
    v.line("  assign last = run && !(x + 1 < tlen) && !(" + (" | ".join(others) if others else "1'b0") + ");")
    v.line("  always @(posedge clk) begin")
    for r, c in rc:
        v.line(f"    sv_{r}_{c} <= run && !last ? svn_{r}_{c} : 1'b0;")
        v.line(f"    sid_{r}_{c} <= sidn_{r}_{c};")
    v.line("  end")


def _output_unit(v: _Writer, p: _Plan, writes: list[tuple[int, str, str, str, str]]) -> None:
    """Output unit: accumulate each column's write into the psum buffer and, in the base pass, set its gate bit."""
    mw, nw, mm, gated, bufP, bufT = p.mw, p.nw, p.mm, p.gated, p.bufP, p.bufT
    for c, we, pix, flt, val in writes:
        v.wire(f"owe_{c}", 1, we)
        v.wire(f"opx_{c}", mw, pix)
        v.wire(f"ofl_{c}", nw, flt)
        old = bufP.read(f"{{opx_{c}, ofl_{c}}}")
        v.wire(f"osum_{c}", 32, f"{old} + {val}", signed=True)
        bufP.write(f"owe_{c}", f"{{opx_{c}, ofl_{c}}}", f"osum_{c}")
        if gated:
            thr = bufT.read(f"ofl_{c}")
            v.wire(f"obit_{c}", 1, f"osum_{c} > {thr}")
    if gated:
        v.line("  always @* begin")
        v.line("    gnext = G;")
        v.line("    if (!pass && cfg_gated) begin")
        for c, *_ in writes:
            v.line(f"      if (owe_{c}) gnext[ofl_{c} * {mm} + opx_{c}] = obit_{c};")
        v.line("    end")
        v.line("  end")
        v.line("  always @(posedge clk) G <= (state != S_RUN && state != S_DRAIN && start) ? 0 : gnext;")


def _host_ports(v: _Writer, p: _Plan) -> None:
    """Host load/dump ports and the status outputs."""
    mw, nw, mm, gated, bufA, bufB, bufP, bufT = p.mw, p.nw, p.mm, p.gated, p.bufA, p.bufB, p.bufP, p.bufT
    for buf, sel_ in ((bufA, 0), (bufB, 1), (bufP, 2), (bufT, 3)):
        if buf is bufT and not gated:
            continue
        buf.write(f"ld_we && ld_sel == 2'd{sel_}", f"ld_addr[{buf.aw - 1}:0]", f"ld_data[{buf.width - 1}:0]")
    dump = bufP.read("dump_addr")
    v.line(f"  assign dump_p = {dump};")
    v.line("  assign dump_g = " + (f"G[dump_addr[{nw - 1}:0] * {mm} + dump_addr[{mw + nw - 1}:{nw}]];" if gated
                                    else "1'b0;"))
    v.line("  assign done = state == S_DONE;")
    v.line("  assign cycles = cyc;")


def _fold_sequencer(v: _Writer, p: _Plan) -> None:
    """The fold sequencer: idle, preload, run, drain and gate-latency states."""
    R, os_, gated = p.R, p.os_, p.gated
    first = "S_RUN" if os_ else "S_PRE"
    start_cond = f"begin pass <= 1'b1; tj <= fc_j; i0 <= 0; pc <= 0; x <= 0; state <= {first}; end"
    gate_state = f"""
      S_GATE: begin
        cyc <= cyc + 1; gc <= gc + 1;
        if (gc + 1 >= cfg_glat) {start_cond}
      end""" if gated else ""
    if gated:
        pass_end = (f"if (!pass && cfg_gated && fc_f) begin if (cfg_glat != 0) begin state <= S_GATE; gc <= 0; end "
                    f"else {start_cond} end else state <= S_DONE;")
    else:
        pass_end = "state <= S_DONE;"
    after_tile = "state <= S_DRAIN;" if os_ else pass_end
    v.line(f"""  always @(posedge clk) begin
    if (rst) begin
      state <= S_IDLE; cyc <= 0;{" pass <= 1'b0;" if gated else ""}
    end else case (state)
      S_IDLE, S_DONE: if (start) begin
        {"pass <= 1'b0; " if gated else ""}tj <= 0; i0 <= 0; pc <= 0; x <= 0; cyc <= 0; state <= {first};
      end
      S_PRE: begin
        cyc <= cyc + 1; pc <= pc + 1;
        if (pc == {R - 1}) begin state <= S_RUN; x <= 0; end
      end
      S_RUN: begin
        cyc <= cyc + 1; x <= x + 1;
        if (last) begin
          pc <= 0; x <= 0;
          if (i0 + {R} < extent) begin i0 <= i0 + {R}; state <= {first}; end
          else if (nt_f) begin tj <= nt_j; i0 <= 0; state <= {first}; end
          else begin {after_tile} end
        end
      end
      S_DRAIN: begin
        cyc <= cyc + 1;
        if (dlast) begin {pass_end} end
      end{gate_state}
      default: state <= S_IDLE;
    endcase
  end""")
    if not os_:
        v.wire("dlast", 1, "1'b0")


def _ws_column_mode(v: _Writer, p: _Plan) -> None:
    """WS gated column mode: each column's compacted list of active pixels, a gather port per
    PE, and whether a chunk holds any row of a column's own conditional set."""
    R, C, mw, kw, pq, mm, bufA, rc = p.R, p.C, p.mw, p.kw, p.pq, p.mm, p.bufA, p.rc
    for r, c in rc:
        v.reg(f"cpix_{r}_{c}", mw)
        v.reg(f"clive_{r}_{c}", 1)
        v.wire(f"cpixn_{r}_{c}", mw)
        v.wire(f"cliven_{r}_{c}", 1)
    for c in range(C):
        _pick(v, f"nb_{c}", mm, mw, f"csel_{c}", f"sidn_0_{c}")
        v.line(f"  assign cpixn_0_{c} = csel_{c}[{mw - 1}:0];")
        v.line(f"  assign cliven_0_{c} = svn_0_{c} & csel_{c}[{mw}];")
    for r, c in rc:
        if r:
            v.line(f"  assign cpixn_{r}_{c} = cpix_{r - 1}_{c};")
            v.line(f"  assign cliven_{r}_{c} = clive_{r - 1}_{c};")
    v.line("  always @(posedge clk) begin")
    for r, c in rc:
        v.line(f"    cpix_{r}_{c} <= cpixn_{r}_{c};")
        v.line(f"    clive_{r}_{c} <= run && !last ? cliven_{r}_{c} : 1'b0;")
    v.line("  end")
    for r, c in rc:
        v.wire(f"kc_{r}_{c}", kw + pq + 2, f"kidx(pm_{c}, i0 + {r}, cfg_kb)")
        addr = f"{{cpixn_{r}_{c}, kc_{r}_{c}[{kw - 1}:0]}}"
        _feed(v, f"gath_{r}_{c}", f"cliven_{r}_{c} && kc_{r}_{c}[{kw + pq + 1}]", bufA, addr)
    for c in range(C):  # does the chunk hold any row of column c's own set?
        v.wire(f"own_{c}", 1, " | ".join(f"(kr_{r}[{kw + pq + 1}] && pm_{c}[kr_{r}[{kw + pq}:{kw + 1}]])"
                                         for r in range(R)))


def _ws_is_datapath(v: _Writer, p: _Plan) -> list[tuple[int, str, str, str, str]]:
    """WS / IS datapath: feeders, PEs and the writes each column sends to the output unit."""
    R, C, mw, nw, kw, pq, xw, mm, is_, gated, bufA, bufB, rc = (
        p.R, p.C, p.mw, p.nw, p.kw, p.pq, p.xw, p.mm, p.is_, p.gated, p.bufA, p.bufB, p.rc)
    writes = []   # (column, we, pixel, filter expr, psum expr) of the output unit
    v.wire("jpre", xw + 1, f"i0 + {R - 1} - pc")
    for c in range(C):  # preload feeders: row R-1-pc of the stationary tile
        if is_:
            addr = f"{{m0[{mw - 1}:0] + {mw}'d{c}, jpre[{kw - 1}:0]}}"
            _feed(v, f"wfeed_{c}", f"colv_{c} && jpre < cfg_k", bufA, addr)
        else:
            v.wire(f"kp_{c}", kw + pq + 2, f"kidx(cm ? pm_{c} : pmt, jpre, cfg_kb)")
            own = "1'b1" if not gated else f"(cm || pm_{c}[kp_{c}[{kw + pq}:{kw + 1}]])"
            addr = f"{{kp_{c}[{kw - 1}:0], flt_{c}[{nw - 1}:0]}}"
            _feed(v, f"wfeed_{c}", f"kp_{c}[{kw + pq + 1}] && {own} && colv_{c}", bufB, addr)
    if not is_:
        for r in range(R):  # shared stream: reduction row of array row r
            v.wire(f"kr_{r}", kw + pq + 2, f"kidx(pmt, i0 + {r}, cfg_kb)")
        for r, c in rc:  # pixel tag of the shared stream, carried with the slot
            v.reg(f"spix_{r}_{c}", mw)
            v.wire(f"spixn_{r}_{c}", mw)
        _pick(v, "U", mm, mw, "gsel", "x")
        v.line(f"  assign spixn_0_0 = gsel[{mw - 1}:0];")
        for r, c in rc:
            if (r, c) != (0, 0):
                s = (r - 1, c) if c == 0 else (r, c - 1)
                v.line(f"  assign spixn_{r}_{c} = spix_{s[0]}_{s[1]};")
        v.line("  always @(posedge clk) if (run) begin")
        for r, c in rc:
            v.line(f"    spix_{r}_{c} <= spixn_{r}_{c};")
        v.line("  end")
    # left-edge feeders of the shared stream
    for r in range(R):
        if is_:
            addr = f"{{i0[{kw - 1}:0] + {kw}'d{r}, sidn_{r}_0[{nw - 1}:0]}}"
            _feed(v, f"afeed_{r}", f"svn_{r}_0 && i0 + {r} < cfg_k", bufB, addr)
        else:
            addr = f"{{spixn_{r}_0, kr_{r}[{kw - 1}:0]}}"
            _feed(v, f"afeed_{r}", f"svn_{r}_0 && kr_{r}[{kw + pq + 1}]", bufA, addr)
    if gated:
        _ws_column_mode(v, p)
    for r, c in rc:
        for n, wdt in (("w", 8), ("a", 8), ("p", 32), ("pn", 32), ("win", 8), ("ain", 8), ("pin", 32)):
            v.wire(f"{n}_{r}_{c}", wdt, signed=True)
        v.line(f"  assign win_{r}_{c} = " + (f"wfeed_{c}" if r == 0 else f"w_{r - 1}_{c}") + ";")
        shared = f"afeed_{r}" if c == 0 else f"a_{r}_{c - 1}"
        v.line(f"  assign ain_{r}_{c} = " + (f"cm ? gath_{r}_{c} : {shared}" if gated else shared) + ";")
        v.line(f"  assign pin_{r}_{c} = " + ("32'sd0" if r == 0 else f"p_{r - 1}_{c}") + ";")
        v.line(f"  cg_pe_ws pe_{r}_{c} (.clk(clk), .load_w(state == S_PRE), .run(run), .w_in(win_{r}_{c}), "
               f".a_in(ain_{r}_{c}), .p_in(pin_{r}_{c}), .w(w_{r}_{c}), .a(a_{r}_{c}), .p(p_{r}_{c}), "
               f".p_next(pn_{r}_{c}));")
    b = R - 1
    for c in range(C):
        if is_:
            writes.append((c, f"run && svn_{b}_{c} && colv_{c}", f"m0[{mw - 1}:0] + {c}",
                           f"sidn_{b}_{c}[{nw - 1}:0]", f"pn_{b}_{c}"))
        elif gated:
            pix = f"(cm ? cpixn_{b}_{c} : spixn_{b}_{c})"
            v.wire(f"opix_{c}", mw, pix)
            need = f"(cm ? cliven_{b}_{c} : nb_{c}[opix_{c}] && own_{c})"
            writes.append((c, f"run && svn_{b}_{c} && colv_{c} && {need}", f"opix_{c}",
                           f"flt_{c}[{nw - 1}:0]", f"pn_{b}_{c}"))
        else:
            writes.append((c, f"run && svn_{b}_{c} && colv_{c}", f"spixn_{b}_{c}", f"flt_{c}[{nw - 1}:0]",
                           f"pn_{b}_{c}"))
    return writes


def _os_datapath(v: _Writer, p: _Plan) -> list[tuple[int, str, str, str, str]]:
    """OS datapath: feeders, PEs and the writes each column sends to the output unit."""
    R, C, mw, nw, kw, pq, xw, mm, gated, bufA, bufB, rc = (
        p.R, p.C, p.mw, p.nw, p.kw, p.pq, p.xw, p.mm, p.gated, p.bufA, p.bufB, p.rc)
    writes = []   # (column, we, pixel, filter expr, psum expr) of the output unit
    if gated:
        _rows_pick(v, "U", mm, mw, xw, R, "rsel")
        for c in range(C):
            _rows_pick(v, f"nb_{c}", mm, mw, xw, R, f"psel{c}")
    for r in range(R):  # pixel held by array row r this fold
        if not gated:
            v.wire(f"rsel_{r}", mw + 1, f"{{i0 + {r} < cfg_m, i0[{mw - 1}:0] + {mw}'d{r}}}")
        v.wire(f"ka_{r}", kw + pq + 2, f"kidx(pmt, sidn_{r}_0, cfg_kb)")
        addr = f"{{rsel_{r}[{mw - 1}:0], ka_{r}[{kw - 1}:0]}}"
        _feed(v, f"afeed_{r}", f"svn_{r}_0 && rsel_{r}[{mw}] && ka_{r}[{kw + pq + 1}]", bufA, addr)
    for c in range(C):
        v.wire(f"kb_{c}", kw + pq + 2, f"kidx(cm ? pm_{c} : pmt, sidn_0_{c}, cfg_kb)")
        own = "1'b1" if not gated else f"(cm || pm_{c}[kb_{c}[{kw + pq}:{kw + 1}]])"
        addr = f"{{kb_{c}[{kw - 1}:0], flt_{c}[{nw - 1}:0]}}"
        _feed(v, f"bfeed_{c}", f"svn_0_{c} && kb_{c}[{kw + pq + 1}] && {own} && colv_{c}", bufB, addr)
    if gated:
        # column mode: PE(r, c) holds entry i0 + r of column c's compacted list and gathers
        # its own operand; the reduction row travels down the column with the filter operand
        for r, c in rc:
            v.reg(f"bk_{r}_{c}", kw)
            v.wire(f"bkn_{r}_{c}", kw, f"kb_{c}[{kw - 1}:0]" if r == 0 else f"bk_{r - 1}_{c}")
            v.wire(f"psel_{r}_{c}", mw + 1, f"psel{c}_{r}")
            addr = f"{{psel_{r}_{c}[{mw - 1}:0], bkn_{r}_{c}}}"
            _feed(v, f"gath_{r}_{c}", f"svn_{r}_{c} && psel_{r}_{c}[{mw}]", bufA, addr)
        v.line("  always @(posedge clk) begin")
        for r, c in rc:
            v.line(f"    bk_{r}_{c} <= bkn_{r}_{c};")
        v.line("  end")
    v.wire("shift", 1, "(run && !last) || state == S_DRAIN")
    v.reg("chn0", xw + 1)
    for r, c in rc:
        v.reg(f"chw_{r}_{c}", 1)
        v.reg(f"chp_{r}_{c}", mw)
        for n, wdt in (("a", 8), ("b", 8), ("ch", 32), ("ain", 8), ("bin", 8), ("chin", 32)):
            v.wire(f"{n}_{r}_{c}", wdt, signed=True)
        shared = f"afeed_{r}" if c == 0 else f"a_{r}_{c - 1}"
        v.line(f"  assign ain_{r}_{c} = " + (f"cm ? gath_{r}_{c} : {shared}" if gated else shared) + ";")
        v.line(f"  assign bin_{r}_{c} = " + (f"bfeed_{c}" if r == 0 else f"b_{r - 1}_{c}") + ";")
        v.line(f"  assign chin_{r}_{c} = " + ("32'sd0" if r == 0 else f"ch_{r - 1}_{c}") + ";")
        v.line(f"  cg_pe_os pe_{r}_{c} (.clk(clk), .clr(state == S_IDLE || state == S_DONE), .run(run), "
               f".en(svn_{r}_{c}), .last(last), .shift(shift), .a_in(ain_{r}_{c}), .b_in(bin_{r}_{c}), "
               f".ch_in(chin_{r}_{c}), .a(a_{r}_{c}), .b(b_{r}_{c}), .ch(ch_{r}_{c}));")
        # which chain entries are real outputs, and their pixel
        if gated:
            need = f"nb_{c}[rsel_{r}[{mw - 1}:0]]"   # base pass: every valid pixel; cond: gate bit
            v.wire(f"chwn_{r}_{c}", 1, f"cm ? psel_{r}_{c}[{mw}] : rsel_{r}[{mw}] && {need}")
            v.wire(f"chpn_{r}_{c}", mw, f"cm ? psel_{r}_{c}[{mw - 1}:0] : rsel_{r}[{mw - 1}:0]")
        else:
            v.wire(f"chwn_{r}_{c}", 1, f"rsel_{r}[{mw}] && colv_{c}")
            v.wire(f"chpn_{r}_{c}", mw, f"rsel_{r}[{mw - 1}:0]")
    v.line("  always @(posedge clk) begin")
    v.line("    if (run && last) chn0 <= n0;")
    for r, c in rc:
        up_w = "1'b0" if r == 0 else f"chw_{r - 1}_{c}"
        up_p = f"{mw}'d0" if r == 0 else f"chp_{r - 1}_{c}"
        v.line(f"    if (rst) chw_{r}_{c} <= 1'b0;")
        v.line(f"    else if (run && last) begin chw_{r}_{c} <= chwn_{r}_{c}; chp_{r}_{c} <= chpn_{r}_{c}; end")
        v.line(f"    else if (shift) begin chw_{r}_{c} <= {up_w}; chp_{r}_{c} <= {up_p}; end")
    v.line("  end")
    above = [f"chw_{r}_{c}" for r in range(R - 1) for c in range(C)]
    v.wire("dlast", 1, "state == S_DRAIN && !(" + (" | ".join(above) if above else "1'b0") + ")")
    b = R - 1
    for c in range(C):
        v.wire(f"flto_{c}", xw + 1, f"chn0 + {c}")
        writes.append((c, f"(run || state == S_DRAIN) && chw_{b}_{c}", f"chp_{b}_{c}",
                       f"flto_{c}[{nw - 1}:0]", f"ch_{b}_{c}"))
    return writes


def emit(design: Design) -> str:
    """Verilog source of ``design``: PE modules, buffer modules and the ``cg_top`` module."""
    d = design
    R, C, mw, nw, kw, pq, xw, tw, rw = d.rows, d.cols, d.mw, d.nw, d.kw, d.pq, d.xw, d.tw, d.rw
    mm, nm, pm, nt = d.m_max, d.n_max, d.p_max, d.tiles
    os_, is_, gated = d.dataflow == "os", d.dataflow == "is", d.gated
    v = _Writer()
    bufA = _Buf("a", OPERAND_BITS, mw + kw)
    bufB = _Buf("b", OPERAND_BITS, kw + nw)
    bufP = _Buf("p", ACC_BITS, mw + nw)
    bufT = _Buf("t", ACC_BITS, nw)
    rc = [(r, c) for r in range(R) for c in range(C)]
    last_pe = (R - 1, C - 1)
    p = _Plan(d, R, C, mw, nw, kw, pq, xw, tw, rw, mm, nm, pm, nt, os_, is_, gated,
              bufA, bufB, bufP, bufT, rc, last_pe)
    _sequencer_state(v, p)
    _tile_columns(v, p)
    _slot_tags(v, p)
    _output_unit(v, p, _os_datapath(v, p) if os_ else _ws_is_datapath(v, p))
    _host_ports(v, p)
    _fold_sequencer(v, p)
    for buf in (bufA, bufB, bufP) + ((bufT,) if gated else ()):
        buf.instance(v)

    ports = f"""module cg_top (
    input clk, input rst, input start, output done, output [31:0] cycles,
    input [{mw}:0] cfg_m, input [{nw}:0] cfg_n, input [{kw}:0] cfg_k, input [3:0] cfg_p, input [{kw}:0] cfg_kb,
    input [{nw}:0] cfg_npg, input cfg_grouped, input cfg_gated, input cfg_colmode, input [7:0] cfg_glat,
    input ld_we, input [1:0] ld_sel, input [{d.ld_width - 1}:0] ld_addr, input [31:0] ld_data,
    input [{mw + nw - 1}:0] dump_addr, output [31:0] dump_p, output dump_g);
  localparam S_IDLE = 3'd0, S_PRE = 3'd1, S_RUN = 3'd2, S_DRAIN = 3'd3, S_GATE = 3'd4, S_DONE = 3'd5;"""
    head = f"// generated by accel_sim.rtl.verilog: {d.name}\n"
    mods = PE_OS if os_ else PE_WS
    bufs = "".join(b.module() for b in (bufA, bufB, bufP) + ((bufT,) if gated else ()))
    return (head + mods + bufs + "\n" + ports + _functions(d) + "\n".join(v.decl) + "\n" + "\n".join(v.body)
            + "\nendmodule\n")
