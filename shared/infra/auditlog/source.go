package auditlog

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// Source is where a verifier reads a scope's log.
type Source interface {
	// Records calls fn for every stored record of s in ascending order.
	// claimed is the sequence number the storage location claims (the
	// object name), 0 when the location names none; err is a read error of
	// that one record, reported so the verifier can name its sequence.
	Records(ctx context.Context, s Scope, fn func(claimed uint64, data []byte, err error) error) error
	// Checkpoints calls fn for every stored checkpoint of s.
	Checkpoints(ctx context.Context, s Scope, fn func(claimed uint64, data []byte, err error) error) error
	// String names the source in reports.
	String() string
}

// BucketSource reads an export bucket: "<dir>/<seq>.json" and
// "<dir>/checkpoints/<seq>.json".
type BucketSource struct {
	Bucket Bucket
}

func (b BucketSource) String() string { return b.Bucket.String() }

// Records lists the scope's directory and reads each record object.
func (b BucketSource) Records(ctx context.Context, s Scope, fn func(uint64, []byte, error) error) error {
	return b.read(ctx, s.Dir(), fn)
}

// Checkpoints lists the scope's checkpoints directory and reads each one.
func (b BucketSource) Checkpoints(ctx context.Context, s Scope, fn func(uint64, []byte, error) error) error {
	return b.read(ctx, s.Dir()+"/checkpoints", fn)
}

func (b BucketSource) read(ctx context.Context, dir string, fn func(uint64, []byte, error) error) error {
	var seqs []uint64
	err := b.Bucket.List(ctx, dir, func(name string) error {
		if seq, ok := ParseSeqName(name); ok {
			seqs = append(seqs, seq) // names are zero-padded: listing order is numeric order
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, seq := range seqs {
		data, err := b.Bucket.Get(ctx, dir+"/"+SeqName(seq))
		if err := fn(seq, data, err); err != nil {
			return err
		}
	}
	return nil
}

// StreamSource reads the log stream SOVKEYS_AUDITLOG itself (operator
// credentials): the authoritative copy every export is made from.
type StreamSource struct {
	JS jetstream.JetStream
}

func (StreamSource) String() string { return "jetstream://" + StreamLog }

// Records reads every record batch of the scope in stream order.
func (src StreamSource) Records(ctx context.Context, s Scope, fn func(uint64, []byte, error) error) error {
	return src.read(ctx, s.RecordSubject(), func(body []byte) error {
		for _, line := range SplitBatch(body) {
			if err := fn(0, line, nil); err != nil {
				return err
			}
		}
		return nil
	})
}

// Checkpoints reads every checkpoint of the scope.
func (src StreamSource) Checkpoints(ctx context.Context, s Scope, fn func(uint64, []byte, error) error) error {
	return src.read(ctx, s.CheckpointSubject(), func(body []byte) error { return fn(0, body, nil) })
}

// read delivers every message on subject up to the last one present now.
func (src StreamSource) read(ctx context.Context, subject string, fn func([]byte) error) error {
	stream, err := src.JS.Stream(ctx, StreamLog)
	if err != nil {
		return fmt.Errorf("auditlog: stream %s: %w", StreamLog, err)
	}
	last, err := stream.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("auditlog: last message on %s: %w", subject, err)
	}
	return ScanSubject(ctx, stream, subject, 1, last.Sequence, func(_ uint64, body []byte) error { return fn(body) })
}

// ScanSubject calls fn with every message on subject whose stream sequence
// is in [from, to], in order, through an ordered consumer.
func ScanSubject(ctx context.Context, stream jetstream.Stream, subject string, from, to uint64, fn func(seq uint64, body []byte) error) error {
	if from < 1 {
		from = 1
	}
	if to < from {
		return nil
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    from,
	})
	if err != nil {
		return fmt.Errorf("auditlog: scan %s: %w", subject, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return fmt.Errorf("auditlog: scan %s: %w", subject, err)
	}
	defer it.Stop()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			it.Stop()
		case <-done:
		}
	}()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("auditlog: scan %s: %w", subject, ctx.Err())
			}
			return fmt.Errorf("auditlog: scan %s: %w", subject, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("auditlog: scan %s: %w", subject, err)
		}
		seq := md.Sequence.Stream
		if seq > to {
			return nil
		}
		if err := fn(seq, m.Data()); err != nil {
			return err
		}
		if seq == to {
			return nil
		}
	}
}
