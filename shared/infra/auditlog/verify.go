package auditlog

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
)

// ErrVerify is wrapped by every *VerifyError.
var ErrVerify = errors.New("auditlog: verification failed")

// VerifyError names the first sequence number where a log fails
// verification.
type VerifyError struct {
	Scope      Scope
	Seq        uint64
	Checkpoint bool // the problem is the checkpoint at Seq, not the record
	Problem    string
}

func (e *VerifyError) Error() string {
	what := "record"
	if e.Checkpoint {
		what = "checkpoint"
	}
	return fmt.Sprintf("audit log %s: %s %d: %s", e.Scope, what, e.Seq, e.Problem)
}

// Unwrap makes errors.Is(err, ErrVerify) hold.
func (e *VerifyError) Unwrap() error { return ErrVerify }

// Options tune Verify.
type Options struct {
	// AllowUnsignedTail accepts records after the newest checkpoint (they
	// are reported in Report.UnsignedTail). By default they fail: a record
	// no checkpoint covers can be removed without trace.
	AllowUnsignedTail bool
}

// Report is what a successful verification proved.
type Report struct {
	Scope        Scope  `json:"-"`
	Kind         string `json:"kind"`
	ID           string `json:"scope"`
	Source       string `json:"source"`
	First        uint64 `json:"first"` // verified range: First..Last, gapless, chained, signed
	Last         uint64 `json:"last"`
	Head         string `json:"head"` // hash of record Last
	SignedAt     string `json:"signed_at"`
	Records      uint64 `json:"records"` // records read
	Checkpoints  int    `json:"checkpoints"`
	UnsignedTail uint64 `json:"unsigned_tail"` // records after Last (only with AllowUnsignedTail)
}

// Verify reads scope s from src and checks, from record 1 on: every
// sequence number present once and in order, every record canonical and in
// s, every record linking to the hash of the one before (record 1 to
// Genesis), every checkpoint signed by pub and matching the record it
// names, and every record covered by a checkpoint. It returns the first
// failure as a *VerifyError naming the sequence number.
func Verify(ctx context.Context, src Source, s Scope, pub *ecdsa.PublicKey, opts Options) (*Report, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	cps, err := loadCheckpoints(ctx, src, s, pub)
	if err != nil {
		return nil, err
	}
	w := &walker{scope: s, cps: cps, next: 1, prev: Genesis}
	if err := src.Records(ctx, s, w.add); err != nil {
		return nil, err
	}
	return w.finish(src, opts)
}

func loadCheckpoints(ctx context.Context, src Source, s Scope, pub *ecdsa.PublicKey) (map[uint64]*Checkpoint, error) {
	cps := make(map[uint64]*Checkpoint)
	err := src.Checkpoints(ctx, s, func(claimed uint64, data []byte, rerr error) error {
		fail := func(seq uint64, format string, args ...any) error {
			return &VerifyError{Scope: s, Seq: seq, Checkpoint: true, Problem: fmt.Sprintf(format, args...)}
		}
		if rerr != nil {
			return fail(claimed, "unreadable: %v", rerr)
		}
		c, err := ParseCheckpoint(data)
		if err != nil {
			return fail(claimed, "altered: %v", err)
		}
		if claimed != 0 && c.Seq != claimed {
			return fail(claimed, "altered: holds the checkpoint of record %d", c.Seq)
		}
		if c.ScopeOf() != s {
			return fail(c.Seq, "belongs to log %s", c.ScopeOf())
		}
		if err := c.Verify(pub); err != nil {
			return fail(c.Seq, "%v", err)
		}
		if prev, ok := cps[c.Seq]; ok {
			if prev.Head != c.Head {
				return fail(c.Seq, "two validly signed checkpoints name different records")
			}
			return nil
		}
		cps[c.Seq] = c
		return nil
	})
	return cps, err
}

// walker checks records one at a time, keeping only the previous hash.
type walker struct {
	scope Scope
	cps   map[uint64]*Checkpoint
	next  uint64 // sequence expected next
	prev  Hash   // hash of record next-1
	// suspect is set when record next-1 does not link to record next-2:
	// either next-2 was altered or next-1's link was. The record after
	// decides (see add); a checkpoint decides at once.
	suspect bool

	covered  uint64 // newest checkpointed record seen
	head     string
	signedAt string
}

func (w *walker) fail(seq uint64, format string, args ...any) error {
	return &VerifyError{Scope: w.scope, Seq: seq, Problem: fmt.Sprintf(format, args...)}
}

func (w *walker) add(claimed uint64, data []byte, rerr error) error {
	seq := w.next
	if w.suspect && (claimed > seq || rerr != nil) {
		return w.resolveSuspect(false)
	}
	switch {
	case claimed > seq:
		return w.fail(seq, "missing")
	case claimed != 0 && claimed < seq:
		return w.fail(claimed, "stored twice")
	case rerr != nil:
		return w.fail(seq, "altered or unreadable: %v", rerr)
	}
	r, err := ParseRecord(data)
	if err != nil {
		if w.suspect {
			return w.resolveSuspect(false)
		}
		return w.fail(seq, "altered: %v", err)
	}
	if r.Kind != w.scope.Kind || r.Scope != w.scope.ID {
		return w.fail(seq, "altered: belongs to log %s:%s", r.Kind, r.Scope)
	}
	switch {
	case claimed != 0 && r.Seq != seq:
		return w.fail(seq, "altered: holds record %d (reordered or replaced)", r.Seq)
	case r.Seq > seq:
		return w.fail(seq, "missing (the next stored record is %d)", r.Seq)
	case r.Seq < seq:
		return w.fail(r.Seq, "stored twice or out of order (found again after record %d)", seq-1)
	}
	h := HashOf(data)
	linked := r.Prev == w.prev.String()
	if w.suspect {
		// Record seq-1 broke its link to seq-2. If this record links to
		// seq-1, seq-1 is intact and seq-2 was altered; if not, seq-1 was.
		return w.resolveSuspect(linked)
	}
	cp, hasCP := w.cps[seq]
	cpOK := hasCP && cp.Head == h.String()
	switch {
	case !linked && seq == 1:
		return w.fail(1, "altered: record 1 does not link to the genesis hash")
	case !linked && hasCP && cpOK:
		return w.fail(seq-1, "altered: record %d, which a signed checkpoint confirms, links to a different record %d", seq, seq-1)
	case !linked && (hasCP || w.covered == seq-1):
		return w.fail(seq, "altered: does not link to record %d, which a signed checkpoint confirms", seq-1)
	case !linked:
		w.suspect = true
	case hasCP && !cpOK:
		return w.fail(seq, "altered: does not match its signed checkpoint")
	}
	if hasCP {
		w.covered, w.head, w.signedAt = seq, cp.Head, cp.Time
	}
	w.prev = h
	w.next++
	return nil
}

// resolveSuspect reports the record the broken link between next-2 and
// next-1 points at; nextLinked says whether record next links to next-1.
func (w *walker) resolveSuspect(nextLinked bool) error {
	j := w.next - 1
	if nextLinked {
		return w.fail(j-1, "altered: record %d links to a different record %d", j, j-1)
	}
	return w.fail(j, "altered: links to neither record %d nor matches record %d's link", j-1, j+1)
}

func (w *walker) finish(src Source, opts Options) (*Report, error) {
	last := w.next - 1
	if w.suspect {
		return nil, w.fail(last-1, "altered: record %d links to a different record %d (or record %d's link was altered)", last, last-1, last)
	}
	var maxCP uint64
	for seq := range w.cps {
		maxCP = max(maxCP, seq)
	}
	if maxCP > last {
		return nil, w.fail(last+1, "missing (a signed checkpoint covers the log up to record %d)", maxCP)
	}
	if last == 0 {
		return nil, w.fail(1, "missing: the log has no records")
	}
	if w.covered < last && !opts.AllowUnsignedTail {
		return nil, w.fail(w.covered+1, "not covered by a signed checkpoint (the newest covers records 1..%d; one is made every second while records flow, or run `sovkeys audit checkpoint`)", w.covered)
	}
	rep := &Report{
		Scope: w.scope, Kind: w.scope.Kind, ID: w.scope.ID, Source: src.String(),
		Last: w.covered, Head: w.head, SignedAt: w.signedAt,
		Records: last, Checkpoints: len(w.cps), UnsignedTail: last - w.covered,
	}
	if w.covered > 0 {
		rep.First = 1
	}
	return rep, nil
}
