package shared

import (
	"bytes"
	"errors"
	"testing"
)

func TestAuditBatchRoundTrip(t *testing.T) {
	events := [][]byte{[]byte(`{"a":1}`), bytes.Repeat([]byte("x"), 300), []byte(`{}`)}
	got, err := UnmarshalAuditBatch(MarshalAuditBatch(events))
	if err != nil || len(got) != len(events) {
		t.Fatalf("round trip: %d events, %v", len(got), err)
	}
	for i := range events {
		if !bytes.Equal(got[i], events[i]) {
			t.Fatalf("event %d: %q, want %q", i, got[i], events[i])
		}
	}
}

func TestAuditBatchRefusesWhatItDoesNotFrame(t *testing.T) {
	good := MarshalAuditBatch([][]byte{[]byte(`{"a":1}`)})
	tooMany := make([][]byte, MaxAuditBatch+1)
	for i := range tooMany {
		tooMany[i] = []byte("{}")
	}
	for name, data := range map[string][]byte{
		"empty":        nil,
		"other magic":  append([]byte("SKE2"), good[4:]...),
		"no events":    MarshalAuditBatch(nil),
		"too many":     MarshalAuditBatch(tooMany),
		"empty event":  MarshalAuditBatch([][]byte{{}}),
		"truncated":    good[:len(good)-1],
		"trailing":     append(append([]byte(nil), good...), '!'),
		"huge length":  append([]byte("SKA1\x01"), 0xff, 0xff, 0xff, 0xff, 0x0f, '{'),
		"too large":    append([]byte("SKA1"), make([]byte, MaxAuditBatchBytes)...),
		"count varint": []byte("SKA1\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
	} {
		if _, err := UnmarshalAuditBatch(data); !errors.Is(err, ErrValidation) {
			t.Errorf("%s: err = %v, want a validation error", name, err)
		}
	}
}

func TestAuditBatchIDs(t *testing.T) {
	id := AuditBatchMsgID(AuditServiceKeyworker, "00112233445566778899aabbccddeeff")
	if !IsAuditBatchMsgID(AuditServiceKeyworker, id) || IsAuditBatchMsgID(AuditServiceGateway, id) ||
		IsAuditBatchMsgID(AuditServiceKeyworker, AuditBatchMsgID(AuditServiceKeyworker, "short")) ||
		IsAuditBatchMsgID(AuditServiceKeyworker, AuditMsgID(AuditServiceKeyworker, "req-1")) {
		t.Fatal("batch id check")
	}
	if s, k, sc, err := ParseAuditSubject(AuditBatchSubjectOn(2, AuditServiceKeyworker)); err != nil || s != AuditServiceKeyworker || k != AuditKindBatch || sc != "" {
		t.Fatalf("batch subject parses as %q %q %q %v", s, k, sc, err)
	}
}

func FuzzUnmarshalAuditBatch(f *testing.F) {
	f.Add(MarshalAuditBatch([][]byte{[]byte(`{"a":1}`), []byte(`{}`)}))
	f.Add([]byte("SKA1\x01\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		events, err := UnmarshalAuditBatch(data)
		if err != nil {
			return
		}
		if len(events) == 0 || len(events) > MaxAuditBatch {
			t.Fatalf("%d events accepted", len(events))
		}
		if again := MarshalAuditBatch(events); !bytes.Equal(again, data) {
			t.Fatalf("accepted a batch that does not re-frame to itself")
		}
	})
}
