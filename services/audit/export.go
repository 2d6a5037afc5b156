package audit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
)

// Export
//
// An exporter is a durable consumer on the log stream that writes every
// record and checkpoint to a bucket under idempotent keys
// <kind>/<token>/<seq>.json and <kind>/<token>/checkpoints/<seq>.json, and
// acks a log message only once all its objects are stored. A failed write
// is retried a few times at once, then the message is handed back to
// JetStream with a growing delay (1 s doubling to MaxExportBackoff, for
// ever): an outage delays export and loses nothing. A checkpoint is
// written only once the record it names is in the bucket, so a bucket
// never shows a signed head whose records are still on their way.
// The lag (log messages not yet exported) is in the service's stats.

const (
	exportFetch    = 256 // log messages per round
	exportWorkers  = 4   // rounds in flight per exporter and process
	exportAttempts = 3   // quick attempts per object before a delayed redelivery
	exportAckWait  = 20 * time.Second
	// exportKeepalive is how often a round tells JetStream its messages are
	// still being worked on (a round may outlast exportAckWait in an outage).
	exportKeepalive = 5 * time.Second
)

// exporter copies the log to one kind of destination.
type exporter struct {
	s       *Service
	name    string   // "central" or "tenant"
	durable string   // consumer name
	filters []string // subjects exported
	// dest returns the scope's bucket, nil when it has none.
	dest func(ctx context.Context, sc auditlog.Scope) (auditlog.Bucket, error)

	cons jetstream.Consumer

	mu         sync.Mutex
	failing    bool // logged once per outage
	failedOnce time.Time
}

func (e *exporter) consumer(ctx context.Context) error {
	cons, err := e.s.logStream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:        e.durable,
		Description:    "sovkeys: audit export (" + e.name + ")",
		FilterSubjects: e.filters,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        exportAckWait,
		MaxDeliver:     -1,
		MaxAckPending:  4096,
	})
	if err != nil {
		return fmt.Errorf("audit: export consumer %s: %w", e.durable, err)
	}
	e.cons = cons
	return nil
}

func (e *exporter) run(ctx context.Context) {
	defer e.s.wg.Done()
	for ctx.Err() == nil {
		batch, err := e.cons.Fetch(exportFetch, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			if ctx.Err() == nil {
				e.s.log.Warn("audit export fetch", "exporter", e.name, "err", err)
				e.s.backoff(ctx, 4, err)
			}
			continue
		}
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if len(msgs) > 0 {
			e.round(ctx, msgs)
		}
	}
}

// object is one write of a round.
type object struct {
	msg    int // index of its log message
	bucket auditlog.Bucket
	key    string
	data   []byte
	needs  string // checkpoints: the record key that must be stored first
}

// round exports the objects of msgs: records first, then checkpoints.
func (e *exporter) round(ctx context.Context, msgs []jetstream.Msg) {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(exportKeepalive)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				for _, m := range msgs {
					_ = m.InProgress()
				}
			}
		}
	}()
	failed := make([]error, len(msgs))
	var records, checkpoints []object
	for i, m := range msgs {
		objs, err := e.objects(ctx, i, m)
		if err != nil {
			failed[i] = err
			continue
		}
		for _, o := range objs {
			if o.needs != "" {
				checkpoints = append(checkpoints, o)
			} else {
				records = append(records, o)
			}
		}
	}
	e.write(ctx, records, failed)
	e.write(ctx, checkpoints, failed)
	var lastErr error
	for i, m := range msgs {
		if failed[i] == nil {
			_ = m.Ack()
			continue
		}
		lastErr = failed[i]
		n := uint64(1)
		if md, err := m.Metadata(); err == nil {
			n = md.NumDelivered
		}
		_ = m.NakWithDelay(min(time.Second<<min(n-1, 10), e.s.cfg.MaxExportBackoff))
	}
	e.report(len(records)+len(checkpoints), lastErr)
}

// objects turns a log message into its writes.
func (e *exporter) objects(ctx context.Context, i int, m jetstream.Msg) ([]object, error) {
	sc, isCP, err := auditlog.ScopeOfSubject(m.Subject())
	if err != nil {
		return nil, err
	}
	b, err := e.dest(ctx, sc)
	if err != nil || b == nil {
		return nil, err
	}
	if isCP {
		cp, err := auditlog.ParseCheckpoint(m.Data())
		if err != nil {
			return nil, err
		}
		return []object{{msg: i, bucket: b, key: sc.CheckpointKey(cp.Seq), data: m.Data(), needs: sc.RecordKey(cp.Seq)}}, nil
	}
	lines := auditlog.SplitBatch(m.Data())
	first, ok := batchFirst(m.Headers().Get(auditlog.HeaderBatch))
	objs := make([]object, 0, len(lines))
	for j, line := range lines {
		seq := first + uint64(j)
		if !ok {
			r, err := auditlog.ParseRecord(line)
			if err != nil {
				return nil, err
			}
			seq = r.Seq
		}
		objs = append(objs, object{msg: i, bucket: b, key: sc.RecordKey(seq), data: line})
	}
	return objs, nil
}

func batchFirst(h string) (uint64, bool) {
	first, _, ok := strings.Cut(h, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(first, 10, 64)
	return n, err == nil && n > 0
}

// write stores objs; the first error of a message's object is kept in
// failed. Buckets that take batches (the JetStream object store) get one
// pipelined batch per putManyMax objects; the others ExportConcurrency
// writes at a time.
func (e *exporter) write(ctx context.Context, objs []object, failed []error) {
	var mu sync.Mutex
	fail := func(o object, err error) {
		mu.Lock()
		if failed[o.msg] == nil {
			failed[o.msg] = err
		}
		mu.Unlock()
	}
	var single []object
	batches := map[auditlog.BatchPutter][]object{}
	for _, o := range objs {
		if failed[o.msg] != nil {
			continue
		}
		if bp, ok := o.bucket.(auditlog.BatchPutter); ok && o.needs == "" {
			batches[bp] = append(batches[bp], o)
		} else {
			single = append(single, o)
		}
	}
	for bp, list := range batches {
		for len(list) > 0 {
			n := min(len(list), putManyMax)
			for _, o := range e.putMany(ctx, bp, list[:n]) {
				single = append(single, o) // retried one at a time
			}
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
}

// putManyMax bounds one pipelined batch (two publishes per object).
const putManyMax = 1024

// putMany writes a batch and returns the objects that failed.
func (e *exporter) putMany(ctx context.Context, bp auditlog.BatchPutter, list []object) []object {
	in := make([]auditlog.Object, len(list))
	for i, o := range list {
		in[i] = auditlog.Object{Key: o.key, Data: o.data}
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var failed []object
	for i, err := range bp.PutMany(pctx, in) {
		if err != nil {
			failed = append(failed, list[i])
		}
	}
	if ok := len(list) - len(failed); ok > 0 {
		e.s.countExport(e.name, func(x *ExportStats) { x.Objects += uint64(ok) })
	}
	return failed
}

// put writes one object with a few quick retries.
func (e *exporter) put(ctx context.Context, o object) error {
	var err error
	for attempt := 0; attempt < exportAttempts; attempt++ {
		if attempt > 0 {
			e.s.backoff(ctx, attempt+1, err)
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = e.putOnce(pctx, o)
		cancel()
		switch {
		case err == nil:
			e.s.countExport(e.name, func(x *ExportStats) { x.Objects++ })
			return nil
		case errors.Is(err, auditlog.ErrConflict):
			// Write-once: the stored object cannot be repaired; verification
			// will name it. Alarm, and do not block the export on it.
			e.s.countExport(e.name, func(x *ExportStats) { x.Conflicts++ })
			e.s.log.Error("exported audit object differs from the log (altered in the bucket?)",
				"exporter", e.name, "bucket", o.bucket.String(), "key", o.key)
			return nil
		}
	}
	return err
}

func (e *exporter) putOnce(ctx context.Context, o object) error {
	if o.needs != "" {
		if _, err := o.bucket.Get(ctx, o.needs); err != nil {
			return fmt.Errorf("audit: checkpoint %s waits for record %s: %w", o.key, o.needs, err)
		}
	}
	return o.bucket.Put(ctx, o.key, o.data)
}

// report updates stats and logs outages once.
func (e *exporter) report(objects int, err error) {
	now := e.s.now()
	e.s.countExport(e.name, func(x *ExportStats) {
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
		e.s.log.Warn("audit export failing; retrying with backoff, nothing is lost", "exporter", e.name, "err", err)
	case err == nil && e.failing && objects > 0:
		e.failing = false
		e.s.log.Info("audit export recovered", "exporter", e.name, "outage", now.Sub(e.failedOnce).String())
	}
}
