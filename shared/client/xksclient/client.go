// Package xksclient is a SigV4-signing client of the XKS proxy API, as AWS
// KMS would call it. Tests, the load generator and operators' smoke checks
// use it.
package xksclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/sovkeys/sovkeys/shared/api/xks"
)

// Client calls one key store.
type Client struct {
	BaseURL     string // https://host:port
	Prefix      string // key store URI prefix, e.g. /example
	AccessKeyID string
	Secret      string
	Region      string       // any; default us-east-1
	HTTP        *http.Client // required
	Now         func() time.Time
}

// APIError is an XKS error answer.
type APIError struct {
	Status  int
	Name    string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("xks: %d %s: %s", e.Status, e.Name, e.Message)
}

// Do signs and POSTs body to path (relative to <prefix>/kms/xks/v1/) and
// decodes a 200 answer into out.
func (c *Client) Do(ctx context.Context, path string, body, out any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	return c.DoRaw(ctx, http.MethodPost, path, data, out)
}

// DoRaw sends raw bytes, for tests of malformed input.
func (c *Client) DoRaw(ctx context.Context, method, path string, data []byte, out any) error {
	prefix := strings.Trim(c.Prefix, "/")
	if prefix != "" {
		prefix = "/" + prefix
	}
	url := strings.TrimRight(c.BaseURL, "/") + prefix + "/kms/xks/v1/" + path
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if err := c.Sign(ctx, req, data); err != nil {
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e xks.ErrorResponse
		_ = json.Unmarshal(rb, &e)
		return &APIError{Status: resp.StatusCode, Name: e.ErrorName, Message: e.ErrorMessage}
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(rb, out)
}

// Sign adds a SigV4 signature over host and x-amz-date, as KMS does.
func (c *Client) Sign(ctx context.Context, req *http.Request, body []byte) error {
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	region := c.Region
	if region == "" {
		region = "us-east-1"
	}
	sum := sha256.Sum256(body)
	creds := aws.Credentials{AccessKeyID: c.AccessKeyID, SecretAccessKey: c.Secret}
	return v4.NewSigner().SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "kms-xks-proxy", region, now())
}

func md(op, keyArn string) xks.RequestMetadata {
	return xks.RequestMetadata{
		AWSPrincipalArn: "arn:aws:iam::123456789012:user/Alice", KMSOperation: op,
		KMSRequestID: "4112f4d6-db54-4af4-ae30-c55a22a8dfae", KMSKeyArn: keyArn,
	}
}

// Metadata calls GetKeyMetadata.
func (c *Client) Metadata(ctx context.Context, keyID string) (*xks.MetadataResponse, error) {
	var out xks.MetadataResponse
	err := c.Do(ctx, "keys/"+keyID+"/metadata", xks.MetadataRequest{RequestMetadata: md("DescribeKey", "")}, &out)
	return &out, err
}

// Encrypt encrypts plaintext under keyID.
func (c *Client) Encrypt(ctx context.Context, keyID string, plaintext, aad []byte, cdiv bool) (*xks.EncryptResponse, error) {
	req := xks.EncryptRequest{
		RequestMetadata: md("Encrypt", "arn:aws:kms:us-east-1:123456789012:key/"+keyID),
		Plaintext:       plaintext, EncryptionAlgorithm: xks.AlgorithmAESGCM, AdditionalAuthenticatedData: aad,
	}
	if cdiv {
		req.CiphertextDataIntegrityValueAlgorithm = xks.CDIVAlgorithmSHA256
	}
	var out xks.EncryptResponse
	err := c.Do(ctx, "keys/"+keyID+"/encrypt", req, &out)
	return &out, err
}

// Decrypt decrypts an Encrypt answer.
func (c *Client) Decrypt(ctx context.Context, keyID string, e *xks.EncryptResponse, aad []byte) ([]byte, error) {
	req := xks.DecryptRequest{
		RequestMetadata:     md("Decrypt", "arn:aws:kms:us-east-1:123456789012:key/"+keyID),
		EncryptionAlgorithm: xks.AlgorithmAESGCM, Ciphertext: e.Ciphertext, InitializationVector: e.InitializationVector,
		AuthenticationTag: e.AuthenticationTag, AdditionalAuthenticatedData: aad, CiphertextMetadata: e.CiphertextMetadata,
	}
	var out xks.DecryptResponse
	err := c.Do(ctx, "keys/"+keyID+"/decrypt", req, &out)
	return out.Plaintext, err
}

// Health calls GetHealthStatus.
func (c *Client) Health(ctx context.Context) (*xks.HealthResponse, error) {
	var out xks.HealthResponse
	err := c.Do(ctx, "health", xks.HealthRequest{RequestMetadata: xks.RequestMetadata{KMSOperation: "CreateCustomKeyStore", KMSRequestID: "health-1"}}, &out)
	return &out, err
}
