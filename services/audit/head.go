package audit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared/infra/auditlog"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
)

// ensureLogStream declares SOVKEYS_AUDITLOG: record batches (and the
// version-1 checkpoints) of every scope. Each scope keeps its newest
// keepBatches batches (MaxMsgsPerSubject, so the head every commit builds
// on always survives); the sequencer never lets a scope's unexported
// records reach that many (see exportBehind), so nothing is dropped before
// it is in the bucket under a signed checkpoint. Deletes and purges are
// denied; reads go to the stream leader (no direct get) so a head is never
// read from a lagging replica.
func ensureLogStream(ctx context.Context, js jetstream.JetStream, t mesh.Topology, keepBatches int64) (jetstream.Stream, error) {
	cfg := jetstream.StreamConfig{
		Name:              auditlog.StreamLog,
		Description:       "sovkeys: sequenced, hash-chained audit records (exported as a transparency log)",
		Subjects:          []string{auditlog.SubjectRecordPrefix + ">", auditlog.SubjectCheckpointPrefix + ">"},
		Retention:         jetstream.LimitsPolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          t.Replicas,
		Duplicates:        2 * time.Minute,
		MaxMsgsPerSubject: keepBatches,
		Discard:           jetstream.DiscardOld,
		DenyDelete:        true,
		DenyPurge:         true,
		AllowDirect:       false,
	}
	// A version-1 log (no per-scope limit, records in it) must be tiled
	// from record 1 before old batches may go: the limit is applied later
	// by applyLogLimit, once the tlog exporter has caught up.
	if old, err := js.Stream(ctx, cfg.Name); err == nil {
		if info := old.CachedInfo(); info.Config.MaxMsgsPerSubject <= 0 && info.State.Msgs > 0 {
			cfg.MaxMsgsPerSubject = -1
		}
	}
	// Bind first: services may not declare or update (mesh.Bootstrap does).
	if s, err := js.Stream(ctx, cfg.Name); err == nil {
		return s, nil
	}
	s, err := js.CreateOrUpdateStream(ctx, cfg)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		s, err = js.CreateOrUpdateStream(ctx, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("audit: stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// applyLogLimit sets the per-scope batch limit on a log stream that was
// declared without it (a version-1 log), once the tlog exporter has no
// batch left to tile: from then on the sequencer's back-pressure keeps
// every unexported batch within the limit.
func (s *Service) applyLogLimit(ctx context.Context) {
	defer s.wg.Done()
	if s.logStream.CachedInfo().Config.MaxMsgsPerSubject > 0 {
		s.logLimited.Store(true)
		return
	}
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		info, err := s.tlog.cons.Info(ctx)
		if err != nil || info.NumPending != 0 || info.NumAckPending != 0 {
			continue
		}
		cfg := s.logStream.CachedInfo().Config
		cfg.MaxMsgsPerSubject = int64(s.cfg.LogKeepBatches)
		if _, err := s.js.UpdateStream(ctx, cfg); err != nil {
			s.log.Warn("audit log stream: per-scope limit not applied yet", "err", err)
			continue
		}
		s.logLimited.Store(true)
		s.log.Info("audit log stream: the version-1 log is tiled; per-scope batch limit applied", "batches", cfg.MaxMsgsPerSubject)
		return
	}
}

// head is the last committed record of a scope.
type head struct {
	streamSeq uint64        // stream sequence of the scope's last batch (0: none yet)
	seq       uint64        // its last record's sequence number
	hash      auditlog.Hash // that record's hash
	time      time.Time     // stream time of the last batch
	// The copy watch (auditlog.HeaderCopyWatch): until copyUntil the
	// scope's events are checked against its records committed since
	// copyFrom (a failover copy was numbered recently).
	copyFrom, copyUntil time.Time
}

// errCorruptLog: the stored head cannot be read back as a record. Numbering
// stops for that scope (nothing safe can follow it) until an operator looks.
var errCorruptLog = errors.New("audit: the last stored record of the scope is unreadable")

// loadHead reads the scope's last batch from the stream.
func loadHead(ctx context.Context, stream jetstream.Stream, sc auditlog.Scope) (head, error) {
	m, err := stream.GetLastMsgForSubject(ctx, sc.RecordSubject())
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return head{hash: auditlog.Genesis}, nil
	}
	if err != nil {
		return head{}, fmt.Errorf("audit: head of %s: %w", sc, err)
	}
	h, err := headOf(m.Sequence, m.Time, m.Data, sc)
	if err == nil {
		h.copyFrom, h.copyUntil = copyWatchOf(m.Header)
	}
	return h, err
}

// copyWatchOf reads a batch's copy watch, "<from>,<until>" in unix
// nanoseconds (zero: none, or unreadable).
func copyWatchOf(hdr nats.Header) (from, until time.Time) {
	f, u, ok := strings.Cut(hdr.Get(auditlog.HeaderCopyWatch), ",")
	fn, ferr := strconv.ParseInt(f, 10, 64)
	un, uerr := strconv.ParseInt(u, 10, 64)
	if !ok || ferr != nil || uerr != nil || fn <= 0 || un <= fn {
		return time.Time{}, time.Time{}
	}
	return time.Unix(0, fn), time.Unix(0, un)
}

// copyWatchValue is the header value copyWatchOf reads.
func copyWatchValue(from, until time.Time) string {
	return strconv.FormatInt(from.UnixNano(), 10) + "," + strconv.FormatInt(until.UnixNano(), 10)
}

func headOf(streamSeq uint64, at time.Time, body []byte, sc auditlog.Scope) (head, error) {
	lines := auditlog.SplitBatch(body)
	if len(lines) == 0 {
		return head{}, fmt.Errorf("%w: %s: empty batch at stream sequence %d", errCorruptLog, sc, streamSeq)
	}
	last := lines[len(lines)-1]
	r, err := auditlog.ParseRecord(last)
	if err != nil {
		return head{}, fmt.Errorf("%w: %s at stream sequence %d: %v", errCorruptLog, sc, streamSeq, err)
	}
	return head{streamSeq: streamSeq, seq: r.Seq, hash: auditlog.HashOf(last), time: at}, nil
}

// recordedIDs collects the dedupe ids of the records in a batch body.
func recordedIDs(body []byte, into map[string]bool) {
	for _, line := range auditlog.SplitBatch(body) {
		if _, id, err := auditlog.PeekRecord(line); err == nil {
			into[id] = true
		}
	}
}

// scanAfter reads the batches on the scope's subject with stream sequence
// in (from, to] one direct message get at a time (a commit conflict's
// delta is usually one or two batches) and returns their records' dedupe
// ids and whether a batch with message id ourID is among them.
func scanAfter(ctx context.Context, stream jetstream.Stream, sc auditlog.Scope, from, to uint64, ourID string) (map[string]bool, bool, error) {
	ids := make(map[string]bool)
	found := false
	subj := sc.RecordSubject()
	for next := from + 1; next <= to; {
		m, err := stream.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, false, fmt.Errorf("audit: scan %s: %w", sc, err)
		}
		if m.Sequence > to {
			break
		}
		if ourID != "" && m.Header.Get(jetstream.MsgIDHeader) == ourID {
			found = true
		}
		recordedIDs(m.Data, ids)
		next = m.Sequence + 1
	}
	return ids, found, nil
}

// scanSince returns the dedupe ids of the scope's records committed at or
// after since (stream time), up to the batch at stream sequence h.streamSeq.
func scanSince(ctx context.Context, stream jetstream.Stream, sc auditlog.Scope, since time.Time, h head) (map[string]bool, error) {
	ids := make(map[string]bool)
	if h.streamSeq == 0 || h.time.Before(since) {
		return ids, nil
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{sc.RecordSubject()},
		DeliverPolicy:  jetstream.DeliverByStartTimePolicy,
		OptStartTime:   &since,
	})
	if err != nil {
		return nil, fmt.Errorf("audit: scan %s: %w", sc, err)
	}
	// The batch at h.streamSeq is on the subject and not before since, so
	// the scan reaches it.
	for {
		batch, err := cons.Fetch(256, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, fmt.Errorf("audit: scan %s: %w", sc, err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return nil, fmt.Errorf("audit: scan %s: %w", sc, err)
			}
			if md.Sequence.Stream > h.streamSeq {
				return ids, nil
			}
			recordedIDs(m.Data(), ids)
			if md.Sequence.Stream == h.streamSeq {
				return ids, nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, fmt.Errorf("audit: scan %s: %w", sc, err)
		}
		if n == 0 && ctx.Err() != nil {
			return nil, fmt.Errorf("audit: scan %s: %w", sc, ctx.Err())
		}
	}
}

// isConflict reports whether a publish failed its expected-last-subject-
// sequence check: 10071 "wrong last sequence: N" (single server, and a
// cluster leader once the subject's last message is applied), or 10164
// "wrong last sequence" (a cluster leader with a write to the subject
// still in flight).
func isConflict(err error) bool { return mesh.IsWrongLastSequence(err) }
