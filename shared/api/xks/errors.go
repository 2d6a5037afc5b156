package xks

import (
	"net/http"

	"github.com/sovkeys/sovkeys/shared"
)

// HTTPError is how the XKS API reports one shared.Code.
type HTTPError struct {
	Status int
	Name   string
}

// Errors is the one table from error codes to XKS HTTP statuses and
// errorNames (specification v1.0.3, "Error codes"). Nothing else picks a
// status or an errorName for the XKS API (the gateway, the loadtest floor).
//
// The specification requires 405 for a GET on an XKS URI but names no
// errorName for it. We answer ValidationException: the method is an invalid
// input, and staying within the specification's closed set of names keeps
// clients that parse errorName (KMS, the AWS test client) working. A code
// missing from the table is answered as InternalException.
var Errors = map[shared.Code]HTTPError{
	shared.CodeValidation:           {http.StatusBadRequest, ErrorNameValidation},
	shared.CodeInvalidState:         {http.StatusBadRequest, ErrorNameInvalidState},
	shared.CodeInvalidCiphertext:    {http.StatusBadRequest, ErrorNameInvalidCiphertext},
	shared.CodeInvalidKeyUsage:      {http.StatusBadRequest, ErrorNameInvalidKeyUsage},
	shared.CodeAuthenticationFailed: {http.StatusUnauthorized, ErrorNameAuthenticationFailed},
	shared.CodeAccessDenied:         {http.StatusForbidden, ErrorNameAccessDenied},
	shared.CodeKeyNotFound:          {http.StatusNotFound, ErrorNameKeyNotFound},
	shared.CodeInvalidURIPath:       {http.StatusNotFound, ErrorNameInvalidURIPath},
	shared.CodeMethodNotAllowed:     {http.StatusMethodNotAllowed, ErrorNameValidation},
	shared.CodeThrottling:           {http.StatusTooManyRequests, ErrorNameThrottling},
	shared.CodeUnsupportedOperation: {http.StatusNotImplemented, ErrorNameUnsupportedOperation},
	shared.CodeDependencyTimeout:    {http.StatusServiceUnavailable, ErrorNameDependencyTimeout},
	shared.CodeInternal:             {http.StatusInternalServerError, ErrorNameInternal},
}

// StatusOf returns the HTTP status and XKS errorName for code.
func StatusOf(code shared.Code) (int, string) {
	if e, ok := Errors[code]; ok {
		return e.Status, e.Name
	}
	return http.StatusInternalServerError, ErrorNameInternal
}
