package audit

import (
	"context"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// Batches (shared/audit_batch.go)
//
// A batch message carries several events of its publishing service. Each
// event is checked and numbered exactly as if it had come alone; the
// message is acked once every one of its events is recorded, and handed
// back (Nak) if any of them was: its redelivery makes every event a
// suspect, so those already recorded are dropped (sequencer.go). A batch
// that cannot be split is kept in the stream for inspection (Term), like a
// malformed event; one bad event inside a well-formed batch is recorded
// in the operator scope in its place, like a forgery.

// batchPublisher returns the service whose batch subject subject is, or
// false when it is not a batch subject.
func batchPublisher(subject string) (string, bool) {
	service, kind, _, err := shared.ParseAuditSubject(subject)
	return service, err == nil && kind == shared.AuditKindBatch
}

// dispatchBatch queues each event of batch message m, published by service.
func (s *Service) dispatchBatch(ctx context.Context, m jetstream.Msg, md *jetstream.MsgMetadata, service string) {
	frames, err := shared.UnmarshalAuditBatch(m.Data())
	if err == nil && m.Headers().Get(mesh.HeaderAuditBatch) != strconv.Itoa(len(frames)) {
		err = shared.NewError(shared.CodeValidation, "batch header says %q events, body holds %d", m.Headers().Get(mesh.HeaderAuditBatch), len(frames))
	}
	if err != nil {
		s.count(func(st *Stats) { st.Malformed++ })
		s.log.Error("malformed audit batch kept in stream for inspection", "subject", m.Subject(), "err", err)
		_ = m.Term()
		return
	}
	d := &batchDelivery{Msg: m}
	d.left.Store(int32(len(frames)))
	msgID := m.Headers().Get(shared.HeaderMsgID)
	for i, f := range frames {
		part := &batchPart{batchDelivery: d}
		ev, err := shared.UnmarshalAuditEvent(f)
		why := ""
		switch {
		case err != nil:
			ev, why = &shared.AuditEvent{}, "malformed event in a batch: "+shared.MessageOf(err)
		default:
			why = batchMismatch(service, msgID, ev)
		}
		if why == "" {
			why = s.scopes.unknown(ctx, ev) // scopes.go
		}
		if why != "" {
			s.count(func(st *Stats) { st.Forgeries++ })
			s.log.Warn("bad event in an audit batch recorded as a forgery attempt", "subject", m.Subject(),
				"publisher", service, "claimed_service", ev.Service, "request_id", ev.RequestID, "why", why)
			ev = forgeryRecord(m.Subject(), service, md, ev, why)
			ev.RequestID += "-" + strconv.Itoa(i)
		}
		if err := s.enqueue(ctx, part, md, ev); err != nil {
			// A scope no log can hold: recorded as a bad event instead.
			s.count(func(st *Stats) { st.Forgeries++ })
			bad := forgeryRecord(m.Subject(), service, md, ev, "event scope: "+shared.MessageOf(err))
			bad.RequestID += "-" + strconv.Itoa(i)
			_ = s.enqueue(ctx, part, md, bad)
		}
	}
}

// batchMismatch says why an event of a batch published by service (with
// de-duplication id msgID) does not match its origin ("" if it does).
func batchMismatch(service, msgID string, ev *shared.AuditEvent) string {
	if why := eventMismatch(service, ev); why != "" {
		return why
	}
	if !shared.IsAuditBatchMsgID(service, msgID) {
		return "de-duplication id is not a batch id of " + service
	}
	return ""
}

// batchDelivery is one delivery of a batch message, shared by its events.
type batchDelivery struct {
	jetstream.Msg
	left     atomic.Int32 // events not yet acked or handed back
	failed   atomic.Bool  // one was handed back: the message is
	progress atomic.Int64 // unix nanos of the last InProgress sent
}

// resolve counts one event down; the last one acks or hands back the message.
func (d *batchDelivery) resolve() error {
	if d.left.Add(-1) != 0 {
		return nil
	}
	if d.failed.Load() {
		return d.Msg.NakWithDelay(time.Second)
	}
	return d.Msg.Ack()
}

// batchPart is one event's handle on its batch's delivery: the sequencer
// acks, naks and keeps it alive as it would a message of its own.
type batchPart struct {
	*batchDelivery
	done atomic.Bool
}

func (p *batchPart) Ack() error {
	if p.done.Swap(true) {
		return nil
	}
	return p.resolve()
}

func (p *batchPart) DoubleAck(context.Context) error { return p.Ack() }

func (p *batchPart) Nak() error { return p.NakWithDelay(0) }

func (p *batchPart) NakWithDelay(time.Duration) error {
	if p.done.Swap(true) {
		return nil
	}
	p.failed.Store(true)
	return p.resolve()
}

// Term of one event hands the batch back like Nak: its other events are
// still to be recorded.
func (p *batchPart) Term() error { return p.NakWithDelay(0) }

func (p *batchPart) TermWithReason(string) error { return p.NakWithDelay(0) }

// InProgress keeps the delivery alive, at most once a second for all its
// events together.
func (p *batchPart) InProgress() error {
	now := time.Now().UnixNano()
	last := p.progress.Load()
	if now-last < int64(time.Second) || !p.progress.CompareAndSwap(last, now) {
		return nil
	}
	return p.Msg.InProgress()
}
