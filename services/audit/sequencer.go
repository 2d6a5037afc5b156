package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// Sequencing (docs/audit.md has the argument in full)
//
// Events are queued per scope; one goroutine per scope with queued events
// turns up to MaxBatch of them into consecutive records after the scope's
// head and publishes them as ONE message on the scope's subject with
// Nats-Expected-Last-Subject-Sequence = the head's stream sequence. The
// server stores it only if nothing was committed to the scope since that
// head, so two writers can never both extend the same head: numbers are
// unique and gapless, and a batch lands whole or not at all. Only then are
// the events acked. A process killed at any instant leaves either a
// committed batch whose events are redelivered (and recognised, below) or
// nothing.
//
// Dedupe by (service, request id). An event's first delivery from the
// durable consumer cannot have been recorded. A redelivered one (or one
// older than the consumer itself) is "suspect": before numbering it, the
// scope's batches committed since the event was published (minus a clock
// margin) are read back and the event is dropped if one holds it. On a
// commit conflict the batches between the old and the new head are read
// too, so an event another process recorded meanwhile (or our own earlier
// attempt whose ack was lost) is never numbered twice. No index grows with
// traffic; the recovery read is bounded by how long the event waited.

const (
	// clockMargin widens the suspect scan for clock differences between
	// stream leaders.
	clockMargin = 5 * time.Minute
	// maxBatchBytes caps one batch message (NATS' default max payload is 1 MiB).
	maxBatchBytes = 512 << 10
	commitTimeout = 30 * time.Second
	// maxAttempts bounds the attempts of one batch before its events are
	// handed back to JetStream (Nak) for later redelivery.
	maxAttempts = 50
)

// pending is one event waiting to be numbered.
type pending struct {
	msgs      []jetstream.Msg // its deliveries (several if redelivered while queued)
	ev        *shared.AuditEvent
	id        string
	published time.Time // stream time of the event
	touched   time.Time // last delivery or InProgress
	suspect   bool
	copy      bool // delivered as a publisher's failover copy
	// scanFrom, when set, bounds how far back a suspect is looked for
	// (else its publication less clockMargin): set for events suspect only
	// because of the scope's copy watch.
	scanFrom time.Time
}

// scopeQueue holds a scope's queued events and cached head.
type scopeQueue struct {
	scope auditlog.Scope

	mu      sync.Mutex
	items   []*pending
	byID    map[string]*pending // queued or being committed
	running bool
	idle    time.Time // when the last drain ended (idle.go)
	freed   bool      // removed from Service.queues; dispatch takes a new one

	// Owned by the running worker.
	head   head
	loaded bool
	scan   scanCache
	signed uint64 // records of the scope under a signed checkpoint, as last read
}

// lateDelivery: an event delivered this long after it was stored may have
// waited out a leader election on its sibling while its publisher stored a
// copy on another; it is checked against the committed records.
const lateDelivery = 2 * time.Second

// dispatch queues one delivery of an audit event, or of each event of a
// batch (batch.go).
func (s *Service) dispatch(ctx context.Context, m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		s.log.Error("audit event without metadata", "subject", m.Subject(), "err", err)
		_ = m.Nak()
		return
	}
	if service, ok := batchPublisher(m.Subject()); ok {
		s.dispatchBatch(ctx, m, md, service)
		return
	}
	ev, err := shared.UnmarshalAuditEvent(m.Data())
	if err == nil {
		var ok bool
		if ev, ok = s.verifyOrigin(m, md, ev); ok { // origin.go
			service, _, _, _ := shared.ParseAuditSubject(m.Subject())
			ev = s.refuseUnknownScope(ctx, m.Subject(), service, md, ev) // scopes.go
		}
	}
	if err == nil {
		err = s.enqueue(ctx, m, md, ev)
	}
	if err != nil {
		s.count(func(st *Stats) { st.Malformed++ })
		s.log.Error("malformed audit event kept in stream for inspection", "subject", m.Subject(), "err", err)
		_ = m.Term()
	}
}

// enqueue queues ev, delivered in m, in its scope's queue; it fails only
// for an event no scope can hold.
func (s *Service) enqueue(ctx context.Context, m jetstream.Msg, md *jetstream.MsgMetadata, ev *shared.AuditEvent) error {
	now := s.now()
	sc := auditlog.ScopeOfEvent(ev)
	if err := sc.Validate(); err != nil {
		return err
	}
	copied := m.Headers().Get(mesh.HeaderFailover) != ""
	p := &pending{
		msgs: []jetstream.Msg{m}, ev: ev, id: auditlog.DedupeID(ev.Service, ev.RequestID),
		published: md.Timestamp, touched: now, copy: copied,
		suspect: md.NumDelivered > 1 || md.Timestamp.Before(s.suspectBefore[md.Stream]) ||
			// A copy may be stored on another sibling too (mesh/siblings.go):
			// published on failover, or held back by a leader election.
			copied || len(s.auditCons) > 1 && now.Sub(md.Timestamp) > lateDelivery,
	}
	s.count(func(st *Stats) {
		st.Events++
		st.ByResult[ev.Kind+"/"+ev.Result]++
		st.LastEvent = ev.End
	})
	q := s.queueOf(sc)
	q.mu.Lock()
	for q.freed { // freed while idle (idle.go): use the scope's new queue
		q.mu.Unlock()
		q = s.queueOf(sc)
		q.mu.Lock()
	}
	defer q.mu.Unlock()
	if ex, ok := q.byID[p.id]; ok {
		ex.msgs = append(ex.msgs, m)
		ex.suspect = ex.suspect || p.suspect
		ex.copy = ex.copy || p.copy
		ex.touched = now
		return nil
	}
	q.items = append(q.items, p)
	q.byID[p.id] = p
	if !q.running {
		q.running = true
		s.wg.Add(1)
		go s.drain(ctx, q)
	}
	return nil
}

func (s *Service) queueOf(sc auditlog.Scope) *scopeQueue {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	q, ok := s.queues[sc]
	if !ok {
		q = &scopeQueue{scope: sc, byID: make(map[string]*pending)}
		s.queues[sc] = q
	}
	return q
}

// drain commits a scope's queued events batch by batch until none are left.
func (s *Service) drain(ctx context.Context, q *scopeQueue) {
	defer s.wg.Done()
	for {
		q.mu.Lock()
		if len(q.items) == 0 || ctx.Err() != nil {
			q.running, q.idle = false, s.now()
			q.mu.Unlock()
			return
		}
		fits := trimBatch(q.items[:min(len(q.items), s.cfg.MaxBatch)])
		batch := append([]*pending(nil), fits...)
		q.items = append([]*pending(nil), q.items[len(fits):]...)
		q.mu.Unlock()
		s.commit(ctx, q, batch)
	}
}

// commit numbers batch after the scope's head and publishes it.
func (s *Service) commit(ctx context.Context, q *scopeQueue, batch []*pending) {
	ctx, span := s.tracer.Start(ctx, "audit commit", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("sovkeys.audit.scope", q.scope.String()), attribute.Int("sovkeys.audit.events", len(batch))))
	defer span.End()
	log := s.log.With("scope", q.scope.String())
	var lastErr error
	for attempt := 0; attempt < maxAttempts && ctx.Err() == nil; attempt++ {
		if attempt > 0 {
			s.backoff(ctx, attempt, lastErr)
		}
		cctx, cancel := context.WithTimeout(ctx, commitTimeout)
		done, err := s.tryCommit(cctx, q, &batch)
		cancel()
		if done {
			return
		}
		lastErr = err
		if !isConflict(err) && !errors.Is(err, errExportBehind) {
			log.Warn("audit commit failed; retrying", "attempt", attempt+1, "events", len(batch), "err", err)
		}
	}
	// Give the events back: JetStream redelivers them (as suspects).
	if ctx.Err() == nil {
		log.Error("audit commit abandoned; events will be redelivered", "events", len(batch), "err", lastErr)
	}
	q.loaded = false
	s.release(q, batch, func(m jetstream.Msg) { _ = m.NakWithDelay(time.Second) })
}

// tryCommit is one attempt. It returns done when every event of the batch
// is recorded (now or before) and acked.
func (s *Service) tryCommit(ctx context.Context, q *scopeQueue, batchp *[]*pending) (bool, error) {
	if !q.loaded {
		h, err := loadHead(ctx, s.logStream, q.scope)
		if err != nil {
			return false, err
		}
		q.head, q.loaded = h, true
	}
	s.watchCopies(q, *batchp)
	if err := s.dedupeSuspects(ctx, q, batchp); err != nil {
		return false, err
	}
	s.dropStale(q, batchp)
	if len(*batchp) == 0 {
		return true, nil
	}
	if err := s.exportRoom(ctx, q, len(*batchp)); err != nil {
		return false, err
	}
	body, last, err := s.build(q.head, *batchp)
	if err != nil {
		return false, err
	}
	msgID := last.hash.String()
	m := nats.NewMsg(q.scope.RecordSubject())
	m.Data = body
	m.Header.Set(auditlog.HeaderBatch, strconv.FormatUint(q.head.seq+1, 10)+"-"+strconv.FormatUint(last.seq, 10))
	if last.copyFrom, last.copyUntil = s.copyWatchAfter(q.head, *batchp); !last.copyUntil.IsZero() {
		m.Header.Set(auditlog.HeaderCopyWatch, copyWatchValue(last.copyFrom, last.copyUntil))
	}
	ack, err := s.js.PublishMsg(ctx, m,
		jetstream.WithExpectLastSequencePerSubject(q.head.streamSeq), jetstream.WithMsgID(msgID))
	switch {
	case err == nil:
		last.streamSeq, last.time = ack.Sequence, s.now()
		q.scan.extend(q.head.streamSeq, last.streamSeq, *batchp)
		s.committed(q, *batchp, last)
		return true, nil
	case !isConflict(err):
		// Unknown outcome (timeout, lost connection). The next attempt
		// rebuilds the same bytes from the same head; if this one landed,
		// that attempt conflicts and finds it below.
		return false, err
	}
	s.count(func(st *Stats) { st.Conflicts++ })
	nh, lerr := loadHead(ctx, s.logStream, q.scope)
	if lerr != nil {
		q.loaded = false
		return false, lerr
	}
	ids, ours, serr := scanAfter(ctx, s.logStream, q.scope, q.head.streamSeq, nh.streamSeq, msgID)
	if serr != nil {
		q.loaded = false
		return false, serr
	}
	q.scan.merge(q.head.streamSeq, nh.streamSeq, ids)
	q.head = nh
	if ours {
		s.committed(q, *batchp, nh)
		return true, nil
	}
	// Whatever another writer recorded meanwhile is not numbered again.
	s.dropRecorded(q, batchp, ids)
	return len(*batchp) == 0, err
}

// copyWatch is how long after a failover copy is numbered its scope's
// events are all checked against the records committed since the copy was
// published (less copyWatchSkew): the copy's original may still be stored
// on its own sibling (its leader stalled, or the publish in flight through
// an election) and then be delivered at once, neither redelivered nor
// late. Each copy numbered extends the watch. An original stored more than
// copyWatch after its copy was numbered is not caught (docs/audit.md).
const copyWatch = 30 * time.Second

// copyWatchSkew covers the clock difference between an event stream's
// leader (the copy's publication time) and the log stream's (batch times).
const copyWatchSkew = 30 * time.Second

// watchCopies marks the batch's events suspect while the scope's copy
// watch runs: one of them may be the original of a copy already numbered
// (by this process or another: the watch is read with the head).
func (s *Service) watchCopies(q *scopeQueue, batch []*pending) {
	if q.head.copyUntil.IsZero() {
		return
	}
	for _, p := range batch {
		if !p.suspect && p.published.Before(q.head.copyUntil) {
			p.suspect, p.scanFrom = true, q.head.copyFrom
		}
	}
}

// copyWatchAfter is the copy watch of a batch committed on h: started or
// extended when the batch holds a failover copy, carried on while it runs.
func (s *Service) copyWatchAfter(h head, batch []*pending) (from, until time.Time) {
	from, until = h.copyFrom, h.copyUntil
	now := s.now()
	if !until.After(now) {
		from, until = time.Time{}, time.Time{}
	}
	for _, p := range batch {
		if !p.copy {
			continue
		}
		until = now.Add(copyWatch)
		if f := p.published.Add(-copyWatchSkew); from.IsZero() || f.Before(from) {
			from = f
		}
	}
	if until.IsZero() {
		return time.Time{}, time.Time{}
	}
	return from, until
}

// errExportBehind: committing would leave more unexported records in the
// scope than the log stream keeps batches of it.
var errExportBehind = errors.New("audit: the scope's export is too far behind; numbering waits")

// exportRoom makes sure committing n more records keeps the scope's
// unexported records (numbered, not yet under a signed checkpoint in the
// bucket) below LogKeepBatches: each batch holds at least one record, so
// the stream's per-scope limit then never drops an unexported batch.
func (s *Service) exportRoom(ctx context.Context, q *scopeQueue, n int) error {
	limit := uint64(s.cfg.LogKeepBatches - 1)
	if !s.logLimited.Load() || q.head.seq+uint64(n) <= q.signed+limit {
		return nil
	}
	st, err := s.signer.state(ctx, q.scope)
	if err != nil {
		return err
	}
	q.signed = uint64(st.Size)
	if q.head.seq+uint64(n) > q.signed+limit {
		s.count(func(st *Stats) { st.ExportBehind++ })
		return fmt.Errorf("%w: %d records numbered, %d exported", errExportBehind, q.head.seq, q.signed)
	}
	return nil
}

// dedupeSuspects drops the batch's suspect events that a batch committed
// since they were published already holds. The ids read are cached per
// scope while suspects keep coming (a redelivery burst after a crash), so
// each batch reads only what was committed since the previous one.
func (s *Service) dedupeSuspects(ctx context.Context, q *scopeQueue, batchp *[]*pending) error {
	var since time.Time
	for _, p := range *batchp {
		if !p.suspect {
			continue
		}
		from := p.scanFrom
		if from.IsZero() {
			from = p.published.Add(-clockMargin)
		}
		if since.IsZero() || from.Before(since) {
			since = from
		}
	}
	if since.IsZero() {
		q.scan = scanCache{}
		return nil
	}
	switch {
	case q.scan.ids == nil || since.Before(q.scan.since):
		ids, err := scanSince(ctx, s.logStream, q.scope, since, q.head)
		if err != nil {
			return err
		}
		q.scan = scanCache{since: since, through: q.head.streamSeq, ids: ids}
	case q.scan.through < q.head.streamSeq:
		ids, _, err := scanAfter(ctx, s.logStream, q.scope, q.scan.through, q.head.streamSeq, "")
		if err != nil {
			return err
		}
		q.scan.merge(q.scan.through, q.head.streamSeq, ids)
	}
	s.dropRecorded(q, batchp, q.scan.ids)
	if len(q.scan.ids) > maxScanCache {
		q.scan = scanCache{}
	}
	return nil
}

// maxScanCache bounds the dedupe ids cached per scope.
const maxScanCache = 100_000

// scanCache holds the dedupe ids of a scope's batches committed from stream
// time since through stream sequence through.
type scanCache struct {
	since   time.Time
	through uint64
	ids     map[string]bool
}

// merge adds the ids of the batches in (from, to] if the cache reaches from.
func (c *scanCache) merge(from, to uint64, ids map[string]bool) {
	if c.ids == nil || c.through < from {
		return
	}
	for id := range ids {
		c.ids[id] = true
	}
	c.through = max(c.through, to)
}

// extend adds a batch this process committed right after from.
func (c *scanCache) extend(from, to uint64, batch []*pending) {
	if c.ids == nil || c.through != from {
		return
	}
	for _, p := range batch {
		c.ids[p.id] = true
	}
	c.through = to
}

// build encodes the batch's records after h; it returns the body and the
// new head (streamSeq and time unset).
func (s *Service) build(h head, batch []*pending) ([]byte, head, error) {
	var body bytes.Buffer
	seq, prev := h.seq, h.hash
	for i, p := range batch {
		seq++
		r := auditlog.FromEvent(p.ev, seq, prev)
		line, err := r.Encode()
		if err == nil && len(line) > auditlog.MaxEntrySize {
			r.Shrink() // one entry of the transparency log holds at most 64 KiB
			line, err = r.Encode()
		}
		if err != nil {
			return nil, head{}, fmt.Errorf("audit: encode record: %w", err)
		}
		if i > 0 {
			body.WriteByte('\n')
		}
		body.Write(line)
		prev = auditlog.HashOf(line)
	}
	return body.Bytes(), head{seq: seq, hash: prev}, nil
}

// trimBatch returns the head of batch that fits one message (at least one
// event; auditlog.FromEvent clips every text field, so one always fits).
func trimBatch(batch []*pending) []*pending {
	size := 0
	for i, p := range batch {
		size += recordSize(p.ev)
		if size > maxBatchBytes && i > 0 {
			return batch[:i]
		}
	}
	return batch
}

// recordSize over-estimates the encoded size of ev's record.
func recordSize(ev *shared.AuditEvent) int {
	n := 512 + len(ev.Kind) + len(ev.Scope) + len(ev.Service) + len(ev.RequestID) + len(ev.TraceID) +
		len(ev.CallerType) + len(ev.CallerID) + len(ev.Principal) + len(ev.SourceIP) + len(ev.API) +
		len(ev.KeyID) + len(ev.KMSRequestID) + len(ev.KMSOperation) + len(ev.Result) + len(ev.Code) + len(ev.Reason)
	for k, v := range ev.Params {
		n += 8 + len(k) + len(v)
	}
	return 2 * n // JSON escaping at most doubles printable text; control bytes are rare
}

// committed acks a recorded batch and moves the head.
func (s *Service) committed(q *scopeQueue, batch []*pending, h head) {
	q.head, q.loaded = h, true
	s.release(q, batch, func(m jetstream.Msg) { _ = m.Ack() })
	s.count(func(st *Stats) {
		st.Batches++
		st.Records += uint64(len(batch))
	})
}

// dropRecorded acks and removes the events ids says are recorded.
func (s *Service) dropRecorded(q *scopeQueue, batchp *[]*pending, ids map[string]bool) {
	if len(ids) == 0 {
		return
	}
	var keep, drop []*pending
	for _, p := range *batchp {
		if ids[p.id] {
			drop = append(drop, p)
		} else {
			keep = append(keep, p)
		}
	}
	if len(drop) > 0 {
		s.release(q, drop, func(m jetstream.Msg) { _ = m.Ack() })
		s.count(func(st *Stats) { st.Duplicates += uint64(len(drop)) })
	}
	*batchp = keep
}

// dropStale removes events whose delivery may already have passed to
// another process (AckWait nearly over without a keepalive: this process
// was stalled). They are neither acked nor numbered here; JetStream
// redelivers them as suspects.
func (s *Service) dropStale(q *scopeQueue, batchp *[]*pending) {
	limit := s.cfg.AckWait * 2 / 3
	now := s.now()
	var keep, drop []*pending
	q.mu.Lock()
	for _, p := range *batchp {
		if now.Sub(p.touched) > limit {
			drop = append(drop, p)
		} else {
			keep = append(keep, p)
		}
	}
	q.mu.Unlock()
	if len(drop) > 0 {
		s.log.Warn("dropping stalled audit events for redelivery", "scope", q.scope.String(), "events", len(drop))
		s.release(q, drop, func(jetstream.Msg) {})
	}
	*batchp = keep
}

// release forgets batch's events and applies fn to every delivery.
func (s *Service) release(q *scopeQueue, batch []*pending, fn func(jetstream.Msg)) {
	var msgs []jetstream.Msg
	q.mu.Lock()
	for _, p := range batch {
		msgs = append(msgs, p.msgs...)
		if q.byID[p.id] == p {
			delete(q.byID, p.id)
		}
	}
	q.mu.Unlock()
	for _, m := range msgs {
		fn(m)
	}
}

// keepalive tells JetStream that queued and committing events are being
// worked on, so they are not redelivered to another process meanwhile.
func (s *Service) keepalive(ctx context.Context) {
	defer s.wg.Done()
	every := s.cfg.AckWait / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := s.now()
		s.freeIdle(now) // idle.go
		s.qmu.Lock()
		queues := make([]*scopeQueue, 0, len(s.queues))
		for _, q := range s.queues {
			queues = append(queues, q)
		}
		s.qmu.Unlock()
		for _, q := range queues {
			var msgs []jetstream.Msg
			q.mu.Lock()
			for _, p := range q.byID {
				if now.Sub(p.touched) >= every {
					p.touched = now
					msgs = append(msgs, p.msgs...)
				}
			}
			q.mu.Unlock()
			for _, m := range msgs {
				_ = m.InProgress()
			}
		}
	}
}

// backoff waits before a retry: 50 ms doubling to 2 s; conflicts retry at once.
func (s *Service) backoff(ctx context.Context, attempt int, err error) {
	if isConflict(err) && attempt < 5 {
		return
	}
	d := min(50*time.Millisecond<<min(attempt, 6), 2*time.Second)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
