package writeonce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/testkit/s3test"
)

var bucketSeq atomic.Int64

// newTestS3Store creates a fresh bucket on srv through the SDK and returns
// a store on it.
func newTestS3Store(t *testing.T, srv *s3test.Server, versioned bool, prefix string) *S3Store {
	t.Helper()
	bucket := fmt.Sprintf("ekt-test-%d", bucketSeq.Add(1))
	srv.CreateBucket(t.Context(), t, bucket, versioned)
	s, err := NewS3(t.Context(), S3Config{
		Endpoint: srv.Endpoint(), Region: s3test.Region, Bucket: bucket, Prefix: prefix,
		AccessKeyID: s3test.AccessKey, SecretAccessKey: s3test.SecretKey, UsePathStyle: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestS3Store(t *testing.T) {
	t.Parallel()
	srv := s3test.RunServer(t)
	for _, tc := range []struct {
		label     string
		versioned bool
		prefix    string
	}{
		{"plain", false, ""},
		{"versioned", true, "ekt/v1/"},
	} {
		t.Run(tc.label, func(t *testing.T) {
			testStore(t, func(t *testing.T) Store { return newTestS3Store(t, srv, tc.versioned, tc.prefix) })
		})
	}
}

// TestVersitygwEnforcesIfNoneMatch is the evidence behind the S3 scheme:
// versitygw v1.8.0 (posix backend, default metadata in xattrs) rejects a
// second If-None-Match "*" put with 412 and keeps the first object; on a
// versioned bucket the rejected put leaves no version behind.
func TestVersitygwEnforcesIfNoneMatch(t *testing.T) {
	t.Parallel()
	endpoint, access, secret, stop := s3test.Run(t)
	defer stop()
	ctx := t.Context()
	c := s3.New(s3.Options{
		Region: s3test.Region, BaseEndpoint: aws.String(endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(access, secret, ""),
	})
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("evidence")}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutBucketVersioning(ctx, &s3.PutBucketVersioningInput{
		Bucket:                  aws.String("evidence"),
		VersioningConfiguration: &types.VersioningConfiguration{Status: types.BucketVersioningStatusEnabled},
	}); err != nil {
		t.Fatal(err)
	}
	put := func(body string) error {
		_, err := c.PutObject(ctx, &s3.PutObjectInput{
			Bucket: aws.String("evidence"), Key: aws.String("k"),
			Body: strings.NewReader(body), IfNoneMatch: aws.String("*"),
		})
		return err
	}
	if err := put("one"); err != nil {
		t.Fatal(err)
	}
	err := put("two")
	if putOutcome(err) != outcomeExists {
		t.Fatalf("second conditional put: %v, want 412 PreconditionFailed", err)
	}
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("evidence"), Key: aws.String("k")})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(out.Body)
	out.Body.Close()
	if string(body) != "one" {
		t.Fatalf("object = %q after rejected put, want %q", body, "one")
	}
	vers, err := c.ListObjectVersions(ctx, &s3.ListObjectVersionsInput{Bucket: aws.String("evidence")})
	if err != nil {
		t.Fatal(err)
	}
	if len(vers.Versions) != 1 {
		t.Fatalf("%d versions after one accepted and one rejected put, want 1", len(vers.Versions))
	}
}

// TestS3RefusesServerIgnoringIfNoneMatch: versitygw with --nometa keeps no
// ETag, answers 200 to a conditional put over an existing key and
// overwrites it. The store's probe must detect that and refuse to write.
func TestS3RefusesServerIgnoringIfNoneMatch(t *testing.T) {
	t.Parallel()
	srv := s3test.RunServer(t, "--nometa")
	s := newTestS3Store(t, srv, false, "")
	ctx := t.Context()
	if err := s.Check(ctx); !errors.Is(err, ErrNotWriteOnce) {
		t.Fatalf("Check: %v, want ErrNotWriteOnce", err)
	}
	if err := s.Create(ctx, "tenant-a", []byte("ekt")); !errors.Is(err, ErrNotWriteOnce) {
		t.Fatalf("Create: %v, want ErrNotWriteOnce", err)
	}
	if _, err := s.Get(ctx, "tenant-a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get: %v, want ErrNotFound (nothing written)", err)
	}
}

func TestS3Corrupt(t *testing.T) {
	t.Parallel()
	srv := s3test.RunServer(t)
	s := newTestS3Store(t, srv, false, "")
	ctx := t.Context()
	// An object written behind the store's back (no recorded digest).
	if _, err := srv.Client().PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(s.bucket), Key: aws.String("foreign"), Body: strings.NewReader("x"),
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "foreign"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get(foreign) = %v, want ErrCorrupt", err)
	}
}

// TestS3Outage: while the server is down Create and Get fail with errors
// that are neither ErrExists nor ErrNotFound; after a restart on the same
// address and data the blob is still there and still write-once.
func TestS3Outage(t *testing.T) {
	t.Parallel()
	srv := s3test.RunServer(t)
	s := newTestS3Store(t, srv, true, "")
	ctx := t.Context()
	if err := s.Create(ctx, "tenant-a", []byte("ekt-a")); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	outageCtx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	for _, err := range []error{
		s.Create(outageCtx, "tenant-b", []byte("ekt-b")),
		func() error { _, err := s.Get(outageCtx, "tenant-a"); return err }(),
	} {
		if err == nil || errors.Is(err, ErrExists) || errors.Is(err, ErrNotFound) {
			t.Fatalf("during outage: %v, want a transport error", err)
		}
	}
	srv.Start()
	if got, err := s.Get(ctx, "tenant-a"); err != nil || string(got) != "ekt-a" {
		t.Fatalf("Get after restart = %q, %v", got, err)
	}
	if err := s.Create(ctx, "tenant-a", []byte("other")); !errors.Is(err, ErrExists) {
		t.Fatalf("Create after restart: %v, want ErrExists", err)
	}
	if err := s.Create(ctx, "tenant-b", []byte("ekt-b")); err != nil {
		t.Fatalf("Create(tenant-b) after restart: %v", err)
	}
}

func TestS3ConfigValidate(t *testing.T) {
	t.Parallel()
	good := S3Config{Endpoint: "http://127.0.0.1:7070", Region: "us-east-1", Bucket: "sovkeys-ekt", Prefix: "ekt/", UsePathStyle: true}
	tests := []struct {
		label string
		edit  func(*S3Config)
		ok    bool
	}{
		{"good", func(*S3Config) {}, true},
		{"aws default endpoint", func(c *S3Config) { c.Endpoint = "" }, true},
		{"no prefix", func(c *S3Config) { c.Prefix = "" }, true},
		{"static keys", func(c *S3Config) { c.AccessKeyID, c.SecretAccessKey = "AK", "SK" }, true},
		{"nested prefix", func(c *S3Config) { c.Prefix = "a/B_c.d/" }, true},
		{"no region", func(c *S3Config) { c.Region = "" }, false},
		{"no bucket", func(c *S3Config) { c.Bucket = "" }, false},
		{"bucket upper", func(c *S3Config) { c.Bucket = "Sovkeys" }, false},
		{"bucket short", func(c *S3Config) { c.Bucket = "ab" }, false},
		{"bucket dash end", func(c *S3Config) { c.Bucket = "abc-" }, false},
		{"endpoint no scheme", func(c *S3Config) { c.Endpoint = "127.0.0.1:7070" }, false},
		{"endpoint ftp", func(c *S3Config) { c.Endpoint = "ftp://host" }, false},
		{"prefix no slash", func(c *S3Config) { c.Prefix = "ekt" }, false},
		{"prefix leading slash", func(c *S3Config) { c.Prefix = "/ekt/" }, false},
		{"prefix dotdot", func(c *S3Config) { c.Prefix = "a/../" }, false},
		{"prefix empty segment", func(c *S3Config) { c.Prefix = "a//" }, false},
		{"key without secret", func(c *S3Config) { c.AccessKeyID = "AK" }, false},
		{"secret without key", func(c *S3Config) { c.SecretAccessKey = "SK" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.label, func(t *testing.T) {
			c := good
			tt.edit(&c)
			err := c.Validate()
			if tt.ok != (err == nil) {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, shared.ErrConfigValidation) {
				t.Fatalf("Validate() = %v, does not wrap ErrConfigValidation", err)
			}
			if _, err := NewS3(t.Context(), c); !tt.ok && !errors.Is(err, shared.ErrConfigValidation) {
				t.Fatalf("NewS3(invalid config) = %v, want ErrConfigValidation", err)
			}
		})
	}
}
