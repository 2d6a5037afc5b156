package shared

import (
	"bytes"
	"encoding/binary"
	"reflect"
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
	if full, err := fullEnvelope().Marshal(); err == nil {
		f.Add(full)
	}
	if j, err := fullEnvelope().marshalJSON(); err == nil {
		f.Add(j)
	}
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

// fullEnvelope sets every field, as the gateway and authn do between them.
func fullEnvelope() *Envelope {
	return &Envelope{
		Version: EnvelopeVersion, ID: "0123456789abcdef0123456789abcdef", API: APIXKSEncrypt,
		Received: time.Unix(1700000000, 123456789).UTC(), Deadline: time.Unix(1700000001, 123456789).UTC(),
		ReplyTo: "sovkeys.reply.gateway.0123456789abcdef", KeyStore: "bench", KeyID: "bench-key-1", BodyForm: BodyFormXKSWork,
		Evidence: Evidence{
			SourceIP: "127.0.0.1", Method: "POST", Path: "/bench/kms/xks/v1/keys/bench-key-1/encrypt", Host: "127.0.0.1:18443",
			Header: map[string][]string{
				"Authorization":   {"AWS4-HMAC-SHA256 Credential=ABCDEFGHIJKLMNOPQRST/20261129/us-east-1/kms-xks-proxy/aws4_request, SignedHeaders=content-length;content-type;host;x-amz-date, Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
				"X-Amz-Date":      {"20261129T222222Z"},
				"Content-Type":    {"application/json"},
				"Content-Length":  {"1800"},
				"User-Agent":      {"Go-http-client/1.1"},
				"Accept-Encoding": {"gzip"},
				"Empty":           {},
			},
			ClientCerts: [][]byte{{1, 2, 3}, {}}, InstanceID: "i-0123", AWSIdentity: "id", SourceVPC: "vpc-1",
		},
		Body: bytes.Repeat([]byte{'x'}, 1800),
		Authz: &Authz{CallerType: "sigv4", CallerID: "ABCDEFGHIJKLMNOPQRST", Principal: "arn:aws:iam::123456789012:user/Alice",
			KMSRequestID: "4112f4d6", KMSOperation: "Encrypt", Pool: "default", KeyLabel: "xks/bench/1", KeyStatus: "ENABLED",
			Tenant: "t", EKTName: "e"},
	}
}

// Both header forms carry every field; this build reads the JSON frames
// older builds wrote.
func TestEnvelopeHeaderForms(t *testing.T) {
	t.Parallel()
	want := fullEnvelope()
	for _, tc := range []struct {
		name    string
		marshal func(*Envelope) ([]byte, error)
		magic   string
	}{
		{"binary", (*Envelope).Marshal, envelopeMagicBinary},
		{"json", (*Envelope).marshalJSON, envelopeMagic},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := tc.marshal(want)
			if err != nil {
				t.Fatal(err)
			}
			if string(data[:4]) != tc.magic {
				t.Fatalf("magic %q", data[:4])
			}
			got, err := UnmarshalEnvelope(data)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(normal(got), normal(want)) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
			}
		})
	}
	// No Authz, zero times, no headers.
	bare := &Envelope{Version: EnvelopeVersion, ID: "r", API: APIVSGenerate, ReplyTo: "x"}
	data, err := bare.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalEnvelope(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, bare) {
		t.Fatalf("bare round trip: %+v", got)
	}
}

// normal makes the JSON decoder's and the binary decoder's results
// comparable: empty header values and certificates decode as empty slices.
func normal(e *Envelope) *Envelope {
	c := *e
	c.Evidence.Header = map[string][]string{}
	for k, v := range e.Evidence.Header {
		c.Evidence.Header[k] = append([]string{}, v...)
	}
	c.Evidence.ClientCerts = nil
	for _, d := range e.Evidence.ClientCerts {
		c.Evidence.ClientCerts = append(c.Evidence.ClientCerts, append([]byte{}, d...))
	}
	return &c
}

// Every strict prefix of a binary header, and a header with a byte too
// many, is refused.
func TestEnvelopeBinaryRefusesTruncated(t *testing.T) {
	t.Parallel()
	e := fullEnvelope()
	e.Body = nil
	data, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	hdr := data[8:]
	frame := func(h []byte) []byte {
		return append(binary.BigEndian.AppendUint32([]byte(envelopeMagicBinary), uint32(len(h))), h...)
	}
	for n := range len(hdr) {
		if _, err := UnmarshalEnvelope(frame(hdr[:n])); err == nil {
			t.Fatalf("accepted a header cut at %d of %d bytes", n, len(hdr))
		}
	}
	if _, err := UnmarshalEnvelope(frame(append(append([]byte{}, hdr...), 0))); err == nil {
		t.Fatal("accepted trailing bytes in the header")
	}
}

// go test ./shared -run '^$' -bench Envelope -benchmem
func BenchmarkEnvelope(b *testing.B) {
	e := fullEnvelope()
	e.Evidence.ClientCerts, e.Authz = nil, nil
	for _, tc := range []struct {
		name    string
		marshal func(*Envelope) ([]byte, error)
	}{{"binary", (*Envelope).Marshal}, {"json", (*Envelope).marshalJSON}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				data, err := tc.marshal(e)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := UnmarshalEnvelope(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
