package shared

import (
	"bytes"
	"testing"
	"time"
)

func TestEnvelopeFraming(t *testing.T) {
	t.Parallel()
	e := &Envelope{Version: EnvelopeVersion, ID: "r1", API: APIXKSEncrypt, ReplyTo: "sovkeys.reply.g",
		Deadline: time.Unix(100, 0).UTC(), KeyStore: "a/b", Body: []byte(`{"plaintext":"aGk="}`)}
	data, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte("eyJw")) {
		t.Fatal("body was base64-encoded")
	}
	got, err := UnmarshalEnvelope(data)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != e.ID || got.KeyStore != e.KeyStore || !bytes.Equal(got.Body, e.Body) || !got.Deadline.Equal(e.Deadline) {
		t.Fatalf("round trip: %+v", got)
	}
	for _, bad := range [][]byte{nil, []byte("SKE1"), []byte("XXXX\x00\x00\x00\x02{}"), append([]byte("SKE1\xff\xff\xff\xff"), '{'), []byte("SKE1\x00\x00\x00\x02{}")} {
		if _, err := UnmarshalEnvelope(bad); err == nil {
			t.Fatalf("accepted %q", bad)
		}
	}
}

func FuzzUnmarshalEnvelope(f *testing.F) {
	e := &Envelope{Version: EnvelopeVersion, ID: "r1", API: APIXKSEncrypt, ReplyTo: "r", Body: []byte("body")}
	data, _ := e.Marshal()
	f.Add(data)
	f.Add([]byte("SKE1\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := UnmarshalEnvelope(b)
		if err != nil {
			return
		}
		again, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := UnmarshalEnvelope(again); err != nil {
			t.Fatalf("re-encoded envelope rejected: %v", err)
		}
	})
}
