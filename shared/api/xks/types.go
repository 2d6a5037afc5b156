// Package xks is the wire contract of the AWS KMS External Key Store (XKS)
// proxy API, version 1.0.3 of the public specification
// (github.com/aws/aws-kms-xksproxy-api-spec): request and response bodies,
// strict request parsing and validation, the request URI grammar, the AAD the
// HSM sees and the ciphertext data integrity value (CDIV).
//
// The package does no I/O. The gateway parses with it to reject bad requests
// early; the keyworker parses the same raw body again (it travels in the
// envelope) and builds the HSM's AAD with EncodeAAD.
//
// Every parse or validation failure is a *shared.Error whose message names
// the offending field and never repeats a field's value, so it is safe to log
// and to return to the caller as the XKS errorMessage.
package xks

import (
	"encoding/json"

	"github.com/sovkeys/sovkeys/shared"
)

// Values the v1 specification fixes.
const (
	// AlgorithmAESGCM is the only encryptionAlgorithm of v1.
	AlgorithmAESGCM = "AES_GCM"
	// CDIVAlgorithmSHA256 is the only ciphertextDataIntegrityValueAlgorithm of v1.
	CDIVAlgorithmSHA256 = "SHA_256"

	// KeySpecAES256 is the keySpec of a 256-bit AES key, the only kind KMS
	// accepts in v1.
	KeySpecAES256 = "AES_256"

	KeyUsageEncrypt = "ENCRYPT"
	KeyUsageDecrypt = "DECRYPT"

	KeyStatusEnabled  = "ENABLED"
	KeyStatusDisabled = "DISABLED"

	HealthActive      = "ACTIVE"
	HealthDegraded    = "DEGRADED"
	HealthUnavailable = "UNAVAILABLE"
)

// Error names of the specification's error table. The gateway maps a
// shared.Code to one of these (and an HTTP status) in its single error table.
const (
	ErrorNameValidation           = "ValidationException"
	ErrorNameInvalidState         = "InvalidStateException"
	ErrorNameInvalidCiphertext    = "InvalidCiphertextException"
	ErrorNameInvalidKeyUsage      = "InvalidKeyUsageException"
	ErrorNameAuthenticationFailed = "AuthenticationFailedException"
	ErrorNameAccessDenied         = "AccessDeniedException"
	ErrorNameKeyNotFound          = "KeyNotFoundException"
	ErrorNameInvalidURIPath       = "InvalidUriPathException"
	ErrorNameThrottling           = "ThrottlingException"
	ErrorNameUnsupportedOperation = "UnsupportedOperationException"
	ErrorNameDependencyTimeout    = "DependencyTimeoutException"
	ErrorNameInternal             = "InternalException"
)

// Size limits. The specification sets minimums a proxy must support; sizes
// above our maximums are answered with UnsupportedOperationException (HTTP
// 501), which the specification reserves for "a parameter value exceeded the
// maximum size that is currently supported by a specific implementation".
const (
	// MaxPlaintextBytes bounds the decoded plaintext of an encrypt request
	// (specification minimum: 4300; KMS itself sends at most 4096).
	MaxPlaintextBytes = 8192
	// MaxCiphertextBytes bounds the decoded ciphertext of a decrypt request.
	// AES-GCM ciphertext is as long as its plaintext.
	MaxCiphertextBytes = MaxPlaintextBytes
	// MaxAADBytes bounds decoded additionalAuthenticatedData (specification
	// minimum: 8192). It must stay below 65536: EncodeAAD writes the length in
	// two bytes.
	MaxAADBytes = 16384
	// MaxCiphertextMetadataBytes is the specification's hard limit on
	// ciphertextMetadata.
	MaxCiphertextMetadataBytes = 20
	// MaxBodyBytes bounds a request body. It holds the largest valid request
	// (base64 of MaxPlaintextBytes and MaxAADBytes, 2048-character ARNs, as
	// the specification requires) with room for fields KMS may add to
	// requestMetadata later. Read at most MaxBodyBytes+1 bytes and hand them
	// to the Parse functions: a longer body gets UnsupportedOperationException.
	MaxBodyBytes = 64 << 10

	// IVBytes is the AES-GCM IV length we generate. Decrypt also accepts
	// IVLongBytes, which the specification allows.
	IVBytes     = 12
	IVLongBytes = 16
	// TagBytes is the only authentication tag length of the specification.
	TagBytes = 16

	// MaxKeyUsages and MaxEkmFleetDetails are response limits of the
	// specification.
	MaxKeyUsages       = 10
	MaxEkmFleetDetails = 10
)

// RequestMetadata is the requestMetadata object every request carries. Which
// fields are required depends on the operation (see RequestMetadata.Validate).
// kmsOperation values are never checked against a list: the specification
// forbids rejecting operations KMS may add later.
type RequestMetadata struct {
	AWSPrincipalArn string `json:"awsPrincipalArn,omitempty"`
	KMSOperation    string `json:"kmsOperation,omitempty"`
	KMSRequestID    string `json:"kmsRequestId,omitempty"`
	KMSKeyArn       string `json:"kmsKeyArn,omitempty"`
	KMSViaService   string `json:"kmsViaService,omitempty"`
	AWSSourceVpc    string `json:"awsSourceVpc,omitempty"`
	AWSSourceVpce   string `json:"awsSourceVpce,omitempty"`
}

// EncryptRequest is the body of POST .../keys/{keyId}/encrypt. Byte fields
// hold decoded values; an absent and an empty additionalAuthenticatedData are
// the same to EncodeAAD and CDIV.
type EncryptRequest struct {
	RequestMetadata                       RequestMetadata `json:"requestMetadata"`
	Plaintext                             []byte          `json:"plaintext"`
	EncryptionAlgorithm                   string          `json:"encryptionAlgorithm"`
	AdditionalAuthenticatedData           []byte          `json:"additionalAuthenticatedData,omitempty"`
	CiphertextDataIntegrityValueAlgorithm string          `json:"ciphertextDataIntegrityValueAlgorithm,omitempty"`
}

// EncryptResponse is the body of a successful encrypt. CiphertextDataIntegrityValue
// must be set (to CDIV(...)) exactly when the request named a CDIV algorithm.
type EncryptResponse struct {
	AuthenticationTag            []byte `json:"authenticationTag"`
	Ciphertext                   []byte `json:"ciphertext"`
	InitializationVector         []byte `json:"initializationVector"`
	CiphertextMetadata           []byte `json:"ciphertextMetadata,omitempty"`
	CiphertextDataIntegrityValue []byte `json:"ciphertextDataIntegrityValue,omitempty"`
}

// DecryptRequest is the body of POST .../keys/{keyId}/decrypt.
type DecryptRequest struct {
	RequestMetadata             RequestMetadata `json:"requestMetadata"`
	EncryptionAlgorithm         string          `json:"encryptionAlgorithm"`
	Ciphertext                  []byte          `json:"ciphertext"`
	InitializationVector        []byte          `json:"initializationVector"`
	AuthenticationTag           []byte          `json:"authenticationTag"`
	AdditionalAuthenticatedData []byte          `json:"additionalAuthenticatedData,omitempty"`
	CiphertextMetadata          []byte          `json:"ciphertextMetadata,omitempty"`
}

// DecryptResponse is the body of a successful decrypt. It carries plaintext:
// never log it.
type DecryptResponse struct {
	Plaintext []byte `json:"plaintext"`
}

// MetadataRequest is the body of POST .../keys/{keyId}/metadata.
type MetadataRequest struct {
	RequestMetadata RequestMetadata `json:"requestMetadata"`
}

// MetadataResponse is the body of a successful GetKeyMetadata.
type MetadataResponse struct {
	KeySpec   string   `json:"keySpec"`
	KeyUsage  []string `json:"keyUsage"`
	KeyStatus string   `json:"keyStatus"`
}

// MarshalJSON writes a nil KeyUsage as [] (the field is required).
func (r MetadataResponse) MarshalJSON() ([]byte, error) {
	type plain MetadataResponse
	if r.KeyUsage == nil {
		r.KeyUsage = []string{}
	}
	return json.Marshal(plain(r))
}

// HealthRequest is the body of POST .../health.
type HealthRequest struct {
	RequestMetadata RequestMetadata `json:"requestMetadata"`
}

// HealthResponse is the body of a successful GetHealthStatus.
type HealthResponse struct {
	XksProxyFleetSize int              `json:"xksProxyFleetSize"`
	XksProxyVendor    string           `json:"xksProxyVendor"`
	XksProxyModel     string           `json:"xksProxyModel"`
	EkmVendor         string           `json:"ekmVendor"`
	EkmFleetDetails   []EkmFleetDetail `json:"ekmFleetDetails"`
}

// EkmFleetDetail describes one external key manager (HSM) behind the proxy.
// HealthStatus is HealthActive, HealthDegraded or HealthUnavailable.
type EkmFleetDetail struct {
	ID           string `json:"id"`
	Model        string `json:"model"`
	HealthStatus string `json:"healthStatus"`
}

// ErrorResponse is the body of every XKS error. ErrorMessage is optional; the
// specification limits it to fewer than 512 printable ASCII characters.
type ErrorResponse struct {
	ErrorName    string `json:"errorName"`
	ErrorMessage string `json:"errorMessage,omitempty"`
}

// Validate checks r against the specification before it is sent. A failure
// is our bug, so it carries shared.CodeInternal.
func (r *EncryptResponse) Validate() error {
	switch {
	case len(r.Ciphertext) == 0:
		return internalErr("encrypt response: ciphertext is empty")
	case len(r.InitializationVector) != IVBytes && len(r.InitializationVector) != IVLongBytes:
		return internalErr("encrypt response: initializationVector must be %d or %d bytes", IVBytes, IVLongBytes)
	case len(r.AuthenticationTag) != TagBytes:
		return internalErr("encrypt response: authenticationTag must be %d bytes", TagBytes)
	case len(r.CiphertextMetadata) > MaxCiphertextMetadataBytes:
		return internalErr("encrypt response: ciphertextMetadata exceeds %d bytes", MaxCiphertextMetadataBytes)
	}
	return nil
}

// Validate checks r against the specification before it is sent.
func (r *MetadataResponse) Validate() error {
	switch {
	case r.KeySpec == "":
		return internalErr("metadata response: keySpec is empty")
	case len(r.KeyUsage) > MaxKeyUsages:
		return internalErr("metadata response: more than %d keyUsage values", MaxKeyUsages)
	case r.KeyStatus != KeyStatusEnabled && r.KeyStatus != KeyStatusDisabled:
		return internalErr("metadata response: keyStatus must be %s or %s", KeyStatusEnabled, KeyStatusDisabled)
	}
	return nil
}

// Validate checks r against the specification before it is sent.
func (r *HealthResponse) Validate() error {
	switch {
	case r.XksProxyFleetSize < 1:
		return internalErr("health response: xksProxyFleetSize must be greater than zero")
	case r.XksProxyVendor == "" || r.XksProxyModel == "" || r.EkmVendor == "":
		return internalErr("health response: xksProxyVendor, xksProxyModel and ekmVendor are required")
	case len(r.EkmFleetDetails) < 1 || len(r.EkmFleetDetails) > MaxEkmFleetDetails:
		return internalErr("health response: ekmFleetDetails must have 1 to %d entries", MaxEkmFleetDetails)
	}
	for i, d := range r.EkmFleetDetails {
		if d.ID == "" || d.Model == "" {
			return internalErr("health response: ekmFleetDetails[%d]: id and model are required", i)
		}
		switch d.HealthStatus {
		case HealthActive, HealthDegraded, HealthUnavailable:
		default:
			return internalErr("health response: ekmFleetDetails[%d]: invalid healthStatus", i)
		}
	}
	return nil
}

func internalErr(format string, args ...any) error {
	return shared.NewError(shared.CodeInternal, "xks: "+format, args...)
}
