package audit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog/witness"
)

// Export: the transparency log
//
// One durable consumer (ConsumerAuditTlog) reads the record batches in
// stream order and grows one Merkle tree per scope (auditlog.Builder, only
// the right edge in memory). Every CheckpointEvery, for each scope that
// grew, it writes the tiles and entry bundles that changed — one object per
// tile or bundle, not per record — then has the HSM sign the new tree
// (with a consistency proof from the last signed one), writes the
// checkpoint, and only then acks the batches. A crash anywhere repeats
// idempotent writes: the tree is a function of the numbered records.
//
// The consumer is pinned (priority policy "pinned_client"): one audit
// process at a time builds the trees; if it dies another one is pinned
// after tlogPinnedTTL and reloads each scope's edge from the bucket at the
// size the signer last signed.

const (
	tlogFetch        = 1024
	tlogAckWait      = 20 * time.Second
	tlogPinnedTTL    = 10 * time.Second
	tlogGroup        = "tlog"
	tlogMaxUnflushed = 16384 // records of one scope before a flush regardless of cadence
	putManyMax       = 1024
	exportAttempts   = 3
)

// tlogScope is one scope's tree in this process.
type tlogScope struct {
	sc         auditlog.Scope
	b          *auditlog.Builder
	signedSize int64
	held       []jetstream.Msg   // batches appended, acked once signed
	full       []auditlog.Object // full tiles and bundles not yet written
	since      time.Time         // first append not yet signed
	gaps       int
	witnessed  []int64 // per witness: the size it last cosigned, as far as known
	used       time.Time
	prev       *auditlog.Hash // hash of the last record in the tree (nil: none)
}

// idleScope is how long a scope's edge stays in memory without records;
// it is reloaded from the bucket when records come again.
const idleScope = time.Minute

type tlogExporter struct {
	s       *Service
	central auditlog.Bucket
	tenants *tenantBuckets // nil unless tenant export is enabled
	cons    jetstream.Consumer

	scopes    map[auditlog.Scope]*tlogScope
	keepalive time.Time
	witnesses []witness.Client

	mu         sync.Mutex
	failing    bool
	failedOnce time.Time
}

func (e *tlogExporter) consumer(ctx context.Context) error {
	// Version 1 exported one object per record through consumers of the
	// same name without a priority group: the tree needs every record from
	// 1, so they are replaced by a consumer that starts at the beginning.
	for _, name := range []string{shared.ConsumerAuditExport, "audit_export_tenant"} {
		c, err := e.s.logStream.Consumer(ctx, name)
		if err == nil && len(c.CachedInfo().Config.PriorityGroups) == 0 {
			if err := e.s.logStream.DeleteConsumer(ctx, name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
				return fmt.Errorf("audit: replace version-1 export consumer %s: %w", name, err)
			}
			e.s.log.Info("version-1 export consumer replaced by the transparency log exporter", "consumer", name)
		}
	}
	cons, err := e.s.logStream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:        shared.ConsumerAuditExport,
		Description:    "sovkeys: audit transparency log tiles",
		FilterSubjects: []string{auditlog.SubjectRecordPrefix + ">"},
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        tlogAckWait,
		MaxDeliver:     -1,
		MaxAckPending:  65536,
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PinnedTTL:      tlogPinnedTTL,
		PriorityGroups: []string{tlogGroup},
	})
	if err != nil {
		return fmt.Errorf("audit: tlog consumer: %w", err)
	}
	e.cons = cons
	e.scopes = map[auditlog.Scope]*tlogScope{}
	return nil
}

func (e *tlogExporter) run(ctx context.Context) {
	defer e.s.wg.Done()
	wait := min(e.s.cfg.CheckpointEvery, time.Second)
	for ctx.Err() == nil {
		batch, err := e.cons.Fetch(tlogFetch, jetstream.FetchMaxWait(wait), jetstream.FetchPriorityGroup(tlogGroup))
		if err == nil {
			for m := range batch.Messages() {
				e.add(ctx, m)
			}
			err = batch.Error()
		}
		switch {
		case err == nil, errors.Is(err, jetstream.ErrNoMessages), errors.Is(err, nats.ErrTimeout):
		case errors.Is(err, jetstream.ErrPinIDMismatch):
			// The pin moved (this loop was busy longer than tlogPinnedTTL,
			// or another process took over). What is held here stays valid:
			// acks need no pin, keepalives keep it from being redelivered,
			// and a process that gets later batches of such a scope waits
			// (gap) until these are acked. The next fetch asks to be
			// pinned again.
			e.s.log.Debug("audit tlog: pin moved", "err", err)
			e.s.backoff(ctx, 4, err) // another process is pinned: ask again in a while
		case ctx.Err() == nil:
			e.s.log.Warn("audit tlog fetch", "err", err)
			e.s.backoff(ctx, 4, err)
		}
		e.flushDue(ctx, false)
		e.keepAlive()
	}
}

// drop forgets a scope's tree (it is reloaded from the signer's state on
// its next batch) and hands its held batches back for redelivery now.
func (e *tlogExporter) drop(sc auditlog.Scope) {
	if st, ok := e.scopes[sc]; ok {
		for _, m := range st.held {
			_ = m.Nak()
		}
		delete(e.scopes, sc)
	}
}

// keepAlive tells JetStream held batches are being worked on.
func (e *tlogExporter) keepAlive() {
	now := e.s.now()
	if now.Sub(e.keepalive) < tlogAckWait/6 {
		return
	}
	e.keepalive = now
	for _, st := range e.scopes {
		for _, m := range st.held {
			_ = m.InProgress()
		}
	}
}

// scope returns the scope's tree, loading it at the size the signer last
// signed (tiles are always written before the signature is asked for).
func (e *tlogExporter) scope(ctx context.Context, sc auditlog.Scope) (*tlogScope, error) {
	if st, ok := e.scopes[sc]; ok {
		return st, nil
	}
	st, err := e.load(ctx, sc)
	if err != nil {
		return nil, err
	}
	e.scopes[sc] = st
	return st, nil
}

func (e *tlogExporter) load(ctx context.Context, sc auditlog.Scope) (*tlogScope, error) {
	ss, err := e.s.signer.state(ctx, sc)
	if err != nil {
		return nil, err
	}
	var root [32]byte
	copy(root[:], ss.Root)
	b, err := auditlog.LoadBuilder(ctx, e.central, sc, ss.Size, root)
	if err != nil {
		return nil, fmt.Errorf("audit: load tree of %s at size %d from %s: %w", sc, ss.Size, e.central, err)
	}
	if ss.Size > 0 {
		// The signature may have come back after a crash before the
		// checkpoint object was written.
		if err := e.writeCheckpoint(ctx, sc, ss.Size, ss.Checkpoint); err != nil {
			return nil, err
		}
	}
	st := &tlogScope{sc: sc, b: b, signedSize: ss.Size, witnessed: make([]int64, len(e.witnesses)), used: e.s.now()}
	if last := b.Last(); last != nil {
		h := auditlog.HashOf(last)
		st.prev = &h
	}
	return st, nil
}

// add appends one record batch to its scope's tree.
func (e *tlogExporter) add(ctx context.Context, m jetstream.Msg) {
	sc, _, err := auditlog.ScopeOfSubject(m.Subject())
	if err != nil {
		e.s.log.Error("audit tlog: message on an unknown subject", "subject", m.Subject())
		_ = m.Term()
		return
	}
	st, err := e.scope(ctx, sc)
	if err != nil {
		e.s.log.Warn("audit tlog: scope not ready", "scope", sc.String(), "err", err)
		e.report(0, err)
		_ = m.NakWithDelay(time.Second)
		return
	}
	lines := auditlog.SplitBatch(m.Data())
	first, ok := batchFirst(m.Headers().Get(auditlog.HeaderBatch))
	if !ok && len(lines) > 0 {
		seq, _, err := auditlog.PeekRecord(lines[0])
		if err != nil {
			e.s.log.Error("audit tlog: unreadable batch", "scope", sc.String(), "err", err)
			_ = m.NakWithDelay(10 * time.Second)
			return
		}
		first = seq
	}
	last := first + uint64(len(lines)) - 1
	size := uint64(st.b.Size())
	switch {
	case len(lines) == 0 || last <= uint64(st.signedSize):
		_ = m.Ack()
		return
	case last <= size:
		st.held = append(st.held, m)
		return
	case first > size+1:
		// A batch before this one has not come (yet): after a takeover,
		// batches the previous process held come back after AckWait.
		// If another process got further meanwhile, reload from the
		// signer's state; else wait for the missing batch.
		_ = m.NakWithDelay(500 * time.Millisecond)
		if st.gaps++; st.gaps%10 == 0 {
			if ss, err := e.s.signer.state(ctx, sc); err == nil && ss.Size > st.b.Size() {
				e.drop(sc)
			}
		}
		return
	}
	// Only records that continue the tree are logged: numbered next, of
	// this scope, and linked by prev to the record before. A batch put in
	// the log by anything but the sequencer (the audit credential could)
	// stalls the scope's export with an alarm instead of being signed.
	next, prev := size+1, st.prev
	for _, line := range lines[size+1-first:] {
		h, why := chains(sc, line, next, prev)
		if why != "" {
			e.s.count(func(x *Stats) { x.CheckpointErrors++ })
			e.s.log.Error("audit tlog: a batch in the log does not chain; not logged", "scope", sc.String(), "seq", next, "why", why)
			e.drop(sc)
			_ = m.NakWithDelay(10 * time.Second)
			return
		}
		next, prev = next+1, &h
	}
	for _, line := range lines[size+1-first:] {
		if err := st.b.Append(line); err != nil {
			e.s.log.Error("audit tlog: record cannot be logged", "scope", sc.String(), "err", err)
			e.drop(sc)
			_ = m.NakWithDelay(10 * time.Second)
			return
		}
	}
	st.prev = prev
	st.gaps = 0
	st.used = e.s.now()
	st.held = append(st.held, m)
	if st.since.IsZero() {
		st.since = e.s.now()
	}
}

// chains says why record line cannot be record seq of sc after the record
// whose hash is prev (nil: none, seq must be 1), "" if it can; it returns
// its hash.
func chains(sc auditlog.Scope, line []byte, seq uint64, prev *auditlog.Hash) (auditlog.Hash, string) {
	h := auditlog.HashOf(line)
	r, err := auditlog.ParseRecord(line)
	switch {
	case err != nil:
		return h, err.Error()
	case r.Seq != seq:
		return h, fmt.Sprintf("record numbered %d", r.Seq)
	case r.Kind != sc.Kind || r.Scope != sc.ID:
		return h, "record of another scope"
	case seq == 1 && r.Prev != auditlog.Genesis.String():
		return h, "first record does not start the chain"
	case seq > 1 && (prev == nil || r.Prev != prev.String()):
		return h, "prev is not the hash of the record before"
	}
	return h, ""
}

func batchFirst(h string) (uint64, bool) {
	first, _, ok := strings.Cut(h, "-")
	if !ok {
		return 0, false
	}
	var n uint64
	_, err := fmt.Sscan(first, &n)
	return n, err == nil && n > 0
}

// flushDue writes and signs the scopes that grew CheckpointEvery ago (all
// that grew, with force).
func (e *tlogExporter) flushDue(ctx context.Context, force bool) {
	now := e.s.now()
	var due []*tlogScope
	for sc, st := range e.scopes {
		if len(st.held) == 0 && st.b.Size() == st.signedSize && len(st.full) == 0 && now.Sub(st.used) > idleScope {
			delete(e.scopes, sc) // bounded memory: idle edges are reloaded on demand
			continue
		}
		grown := st.b.Size() > st.signedSize
		if !grown && len(st.held) > 0 {
			due = append(due, st) // held batches of an already signed size
			continue
		}
		if grown && (force || now.Sub(st.since) >= e.s.cfg.CheckpointEvery || st.b.Size()-st.signedSize >= tlogMaxUnflushed) {
			due = append(due, st)
		}
	}
	if len(due) == 0 {
		return
	}
	// Oldest first: a round that runs out of time leaves the newest.
	slices.SortFunc(due, func(a, b *tlogScope) int { return a.since.Compare(b.since) })
	// 1. Tiles and bundles of every due scope, to every destination.
	var objs []exportObject
	for _, st := range due {
		if st.b.Size() == st.signedSize {
			continue
		}
		var partial []auditlog.Object
		for _, o := range st.b.Flush() {
			if strings.Contains(o.Key, ".p/") {
				partial = append(partial, o)
			} else {
				st.full = append(st.full, o)
			}
		}
		dests, err := e.destinations(ctx, st.sc)
		if err != nil {
			e.report(0, err)
			continue
		}
		for _, d := range dests {
			for _, o := range append(append([]auditlog.Object(nil), st.full...), partial...) {
				objs = append(objs, exportObject{st: st, bucket: d, key: st.sc.TlogPrefix() + o.Key, data: o.Data})
			}
		}
	}
	failed := e.write(ctx, objs)
	// 2. Sign and publish the checkpoint of each scope whose tiles are in.
	sem := make(chan struct{}, signConcurrency)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var lastErr error
	budget := now.Add(tlogPinnedTTL / 3)
	for _, st := range due {
		if failed[st] != nil {
			lastErr = failed[st]
			continue
		}
		st.full = nil
		if e.s.now().After(budget) {
			continue // the rest next round: keep fetching, keep the pin
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := e.publish(ctx, st); err != nil {
				mu.Lock()
				lastErr = err
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, st := range due {
		if st.b.Size() < st.signedSize {
			e.drop(st.sc) // the signer is ahead: reload
		}
	}
	e.report(len(objs), lastErr)
}

// publish signs a scope's tree, writes the checkpoint and acks the batches.
func (e *tlogExporter) publish(ctx context.Context, st *tlogScope) error {
	cctx, cancel := context.WithTimeout(ctx, checkpointTimeout)
	defer cancel()
	if st.b.Size() > st.signedSize {
		cp, size, err := e.s.signer.sign(cctx, st.sc, st.b, e.central, st.signedSize)
		if errors.Is(err, errSignerAhead) {
			st.signedSize = size
			return nil
		}
		if err != nil {
			e.s.count(func(s *Stats) {
				s.CheckpointErrors++
				s.LastCheckpointError = err.Error()
			})
			e.s.log.Warn("checkpoint failed", "scope", st.sc.String(), "err", err)
			return err
		}
		cp = append(cp, e.cosign(cctx, st, cp)...)
		if err := e.writeCheckpoint(cctx, st.sc, size, cp); err != nil {
			return err
		}
		st.signedSize = size
		e.s.count(func(s *Stats) { s.Checkpoints++ })
	}
	for _, m := range st.held {
		_ = m.Ack()
	}
	st.held, st.since = nil, time.Time{}
	return nil
}

// cosign asks every witness to cosign the checkpoint of st's tree and
// returns the cosignature lines obtained. A witness that last saw another
// size answers with it; the proof is rebuilt from there once.
func (e *tlogExporter) cosign(ctx context.Context, st *tlogScope, cp []byte) []byte {
	var out []byte
	for i, w := range e.witnesses {
		old := st.witnessed[i]
		var sigs []byte
		var err error
		for attempt := 0; attempt < 2; attempt++ {
			var proof [][]byte
			if proof, err = e.proof(ctx, st, old); err != nil {
				break
			}
			sigs, err = w.AddCheckpoint(ctx, old, proof, cp)
			var conflict *witness.ConflictError
			if !errors.As(err, &conflict) || conflict.Size > st.b.Size() {
				break
			}
			old = conflict.Size
		}
		if err != nil {
			e.s.log.Warn("witness did not cosign", "witness", w.URL, "scope", st.sc.String(), "err", err)
			e.s.count(func(s *Stats) { s.WitnessRefusals++ })
			continue
		}
		st.witnessed[i] = st.b.Size()
		out = append(out, sigs...)
	}
	return out
}

// proof is the consistency proof of st's tree from size old.
func (e *tlogExporter) proof(ctx context.Context, st *tlogScope, old int64) ([][]byte, error) {
	if old == 0 || old >= st.b.Size() {
		return nil, nil
	}
	hr, err := st.b.HashReader(ctx, e.central, st.sc)
	if err != nil {
		return nil, err
	}
	p, err := tlog.ProveTree(st.b.Size(), old, hr)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(p))
	for i := range p {
		out[i] = p[i][:]
	}
	return out, nil
}

// writeCheckpoint stores a signed checkpoint in the history (write-once)
// and as the scope's "checkpoint" where the bucket can replace objects.
func (e *tlogExporter) writeCheckpoint(ctx context.Context, sc auditlog.Scope, size int64, cp []byte) error {
	dests, err := e.destinations(ctx, sc)
	if err != nil {
		return err
	}
	for _, d := range dests {
		if err := d.Put(ctx, sc.CheckpointHistoryKey(size), cp); err != nil && !errors.Is(err, auditlog.ErrConflict) {
			return err
		}
		if r, ok := d.(auditlog.Replacer); ok {
			if err := r.Replace(ctx, sc.CheckpointPath(), cp); err != nil {
				return err
			}
		}
	}
	return nil
}

func (e *tlogExporter) destinations(ctx context.Context, sc auditlog.Scope) ([]auditlog.Bucket, error) {
	out := []auditlog.Bucket{e.central}
	if e.tenants != nil {
		b, err := e.tenants.bucket(ctx, sc)
		if err != nil {
			return nil, err
		}
		if b != nil {
			out = append(out, b)
		}
	}
	return out, nil
}

// exportObject is one write of a flush.
type exportObject struct {
	st     *tlogScope
	bucket auditlog.Bucket
	key    string
	data   []byte
}

// write stores objs; it returns the first error per scope. Buckets that
// take batches (the JetStream object store) get pipelined batches; the
// others ExportConcurrency writes at a time.
func (e *tlogExporter) write(ctx context.Context, objs []exportObject) map[*tlogScope]error {
	failed := map[*tlogScope]error{}
	var mu sync.Mutex
	fail := func(o exportObject, err error) {
		mu.Lock()
		if failed[o.st] == nil {
			failed[o.st] = err
		}
		mu.Unlock()
	}
	var single []exportObject
	batches := map[auditlog.BatchPutter][]exportObject{}
	for _, o := range objs {
		if bp, ok := o.bucket.(auditlog.BatchPutter); ok {
			batches[bp] = append(batches[bp], o)
		} else {
			single = append(single, o)
		}
	}
	for bp, list := range batches {
		for len(list) > 0 {
			n := min(len(list), putManyMax)
			in := make([]auditlog.Object, n)
			for i, o := range list[:n] {
				in[i] = auditlog.Object{Key: o.key, Data: o.data}
			}
			pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			for i, err := range bp.PutMany(pctx, in) {
				if err != nil {
					single = append(single, list[i]) // retried one at a time
				}
			}
			cancel()
			list = list[n:]
		}
	}
	sem := make(chan struct{}, e.s.cfg.ExportConcurrency)
	var wg sync.WaitGroup
	for _, o := range single {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := e.put(ctx, o); err != nil {
				fail(o, err)
			}
		}()
	}
	wg.Wait()
	return failed
}

// put writes one object with a few quick retries. A conflict (the key holds
// other bytes) is an alarm: the tree in the bucket was altered.
func (e *tlogExporter) put(ctx context.Context, o exportObject) error {
	var err error
	for attempt := 0; attempt < exportAttempts; attempt++ {
		if attempt > 0 {
			e.s.backoff(ctx, attempt+1, err)
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = o.bucket.Put(pctx, o.key, o.data)
		cancel()
		if errors.Is(err, auditlog.ErrConflict) {
			e.s.countExport("central", func(x *ExportStats) { x.Conflicts++ })
			e.s.log.Error("exported audit tile differs from the log (altered in the bucket?)", "bucket", o.bucket.String(), "key", o.key)
			return err
		}
		if err == nil {
			return nil
		}
	}
	return err
}

// report updates stats and logs outages once.
func (e *tlogExporter) report(objects int, err error) {
	now := e.s.now()
	e.s.countExport("central", func(x *ExportStats) {
		x.Objects += uint64(objects)
		if err != nil {
			x.Failures++
			x.LastError, x.LastErrorAt = err.Error(), now
		} else if objects > 0 {
			x.LastSuccess = now
		}
	})
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case err != nil && !e.failing:
		e.failing, e.failedOnce = true, now
		e.s.log.Warn("audit export failing; retrying, nothing is lost", "err", err)
	case err == nil && e.failing && objects > 0:
		e.failing = false
		e.s.log.Info("audit export recovered", "outage", now.Sub(e.failedOnce).String())
	}
}
