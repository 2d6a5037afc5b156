package mesh

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/metrics"
)

// AuditBatcher publishes one service's audit events with group commit:
// events that arrive while earlier ones are being stored go out together
// as one batch message (shared.MarshalAuditBatch: one store, one ack, one
// delivery to the audit service), and each caller is released only when
// the message holding its event is acked. Nothing waits for company: an
// event that finds a publisher free goes out at once, alone, exactly as
// PublishAudit sends it. The guarantee is PublishAudit's: durable before
// the caller answers, fail closed otherwise.
type AuditBatcher struct {
	js      jetstream.JetStream
	service string
	queue   chan *auditItem
	// publishers is how many batches may be in flight at once.
	publishers int
}

type auditItem struct {
	ctx  context.Context
	ev   *shared.AuditEvent
	data []byte
	done chan error
}

// auditBatchPublishers: batches in flight at once per service process:
// two keep the stream busy while the next batch gathers (more publish
// smaller batches for the same work: measured, docs/BENCHMARKS.md).
const auditBatchPublishers = 2

// auditBatchWait bounds one batch's publish when none of its callers has
// a deadline.
const auditBatchWait = 10 * time.Second

// NewAuditBatcher returns service's batcher; Run must be running for
// Publish to return anything but ctx's end.
func NewAuditBatcher(js jetstream.JetStream, service string) *AuditBatcher {
	return &AuditBatcher{js: js, service: service, queue: make(chan *auditItem, 4*shared.MaxAuditBatch), publishers: auditBatchPublishers}
}

// Publish records ev (its Service must be the batcher's) and returns once
// it is durable, or with the error that keeps the caller from answering.
func (b *AuditBatcher) Publish(ctx context.Context, ev *shared.AuditEvent) error {
	ev.Version = shared.AuditEventVersion
	if err := ev.Validate(); err != nil {
		return err
	}
	if ev.Service != b.service {
		return fmt.Errorf("%w: %s's audit batcher given a %s event", shared.ErrValidation, b.service, ev.Service)
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("mesh: audit event: %w", err)
	}
	it := &auditItem{ctx: ctx, ev: ev, data: data, done: make(chan error, 1)}
	select {
	case b.queue <- it:
	case <-ctx.Done():
		return fmt.Errorf("mesh: publish audit event: %w", ctx.Err())
	}
	select {
	case err := <-it.done:
		return err
	case <-ctx.Done():
		// The event may still be stored: the caller withholds its answer
		// all the same (at least once, never an answer without a record).
		return fmt.Errorf("mesh: publish audit event: %w", ctx.Err())
	}
}

// StartAuditBatcher runs a batcher for service until stop is called. It
// outlives the caller's context on purpose: call stop after the handlers
// that publish through it are done, so work in flight at shutdown still
// gets its record before its answer.
func StartAuditBatcher(js jetstream.JetStream, service string) (b *AuditBatcher, stop func()) {
	b = NewAuditBatcher(js, service)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Run(ctx) }()
	return b, func() { cancel(); <-done }
}

// Run publishes queued events until ctx ends.
func (b *AuditBatcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for range b.publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.publishLoop(ctx)
		}()
	}
	wg.Wait()
}

func (b *AuditBatcher) publishLoop(ctx context.Context) {
	for {
		var first *auditItem
		select {
		case first = <-b.queue:
		case <-ctx.Done():
			return
		}
		batch, size := []*auditItem{first}, len(first.data)
	gather:
		for len(batch) < shared.MaxAuditBatch {
			select {
			case it := <-b.queue:
				if size+len(it.data)+16 > shared.MaxAuditBatchBytes/2 {
					// Too much for this batch: it goes out alone, now.
					b.finish([]*auditItem{it}, b.publishOne(it))
					continue
				}
				batch, size = append(batch, it), size+len(it.data)+16
			default:
				break gather
			}
		}
		if len(batch) == 1 {
			b.finish(batch, b.publishOne(first))
			continue
		}
		b.finish(batch, b.publishBatch(batch))
	}
}

func (b *AuditBatcher) finish(batch []*auditItem, err error) {
	if err == nil {
		metrics.AuditPublished(b.service, len(batch))
	}
	for _, it := range batch {
		it.done <- err
	}
}

// publishOne sends a lone event as PublishAudit does.
func (b *AuditBatcher) publishOne(it *auditItem) error {
	return publishAuditData(it.ctx, b.js, it.ev, it.data)
}

// publishBatch sends batch as one message; its context ends with the
// latest of its callers' deadlines.
func (b *AuditBatcher) publishBatch(batch []*auditItem) error {
	var latest time.Time
	frames := make([][]byte, len(batch))
	for i, it := range batch {
		frames[i] = it.data
		if dl, ok := it.ctx.Deadline(); ok && dl.After(latest) {
			latest = dl
		} else if !ok {
			latest = time.Now().Add(auditBatchWait)
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), latest)
	defer cancel()
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	id := shared.AuditBatchMsgID(b.service, hex.EncodeToString(nonce[:]))
	m := nats.NewMsg(shared.AuditBatchSubjectOn(0, b.service))
	m.Data = shared.MarshalAuditBatch(frames)
	m.Header.Set(shared.HeaderMsgID, id)
	m.Header.Set(HeaderAuditBatch, strconv.Itoa(len(batch)))
	return publishAuditMsg(ctx, b.js, m, id, func(i int) string { return shared.AuditBatchSubjectOn(i, b.service) })
}

// HeaderAuditBatch carries the number of events of a batch message.
const HeaderAuditBatch = "Sovkeys-Audit-Batch"
