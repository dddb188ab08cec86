// Command fake-gcs serves a local Google Cloud Storage for tests: fsouza/fake-gcs-server
// (the JSON API, and the XML API's listing and downloads), plus what of the XML API it lacks
// (fsouza/fake-gcs-server#331) and object_store (delta-rs) sends:
//
//	PUT /<bucket>/<object>                          upload the body
//	PUT /<bucket>/<object>, x-goog-copy-source: b/o  copy another object
//	GET /<bucket>?list-type=2&start-after=<key>     list the keys after <key> (the emulator ignores start-after)
//
// and a fix to the JSON API's batch requests: the emulator skips parts without a Content-ID,
// which google-cloud-storage 3 (so Beam's gcsio: copies, deletes, renames) no longer sends.
//
// The writes honour x-goog-if-generation-match (0: only if the object does not exist) and
// answer with ETag and x-goog-generation headers, as GCS does
// (https://cloud.google.com/storage/docs/xml-api/put-object-upload, .../put-object-copy,
// .../get-bucket-list).
// Conditional writes through this path are atomic with each other (one lock).
// Objects live in memory. Usage: fake-gcs -host 127.0.0.1 -port 4443
package main

import (
	"bytes"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"log"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fsouza/fake-gcs-server/fakestorage"
)

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Uint("port", 4443, "port to listen on")
	flag.Parse()
	addr := fmt.Sprintf("%s:%d", *host, *port)
	server, err := fakestorage.NewServerWithOptions(fakestorage.Options{
		Scheme:      "http",
		Host:        *host,
		Port:        uint16(*port),
		NoListener:  true, // served below, through gcsExtensions
		PublicHost:  addr,
		ExternalURL: "http://" + addr,
	})
	if err != nil {
		log.Fatalf("fake-gcs: %v", err)
	}
	handler := &gcsExtensions{server: server, next: server.HTTPHandler()}
	log.Printf("fake-gcs: serving http://%s", addr)
	log.Fatal(http.ListenAndServe(addr, handler))
}

// gcsExtensions answers what the emulator lacks and hands every other request to it.
type gcsExtensions struct {
	server *fakestorage.Server
	next   http.Handler
	lock   sync.Mutex
}

// jsonAPIPrefixes are paths of the JSON API (and the emulator's own), never XML object names.
var jsonAPIPrefixes = []string{"/storage/", "/upload/", "/download/", "/batch/", "/_internal/"}

// xmlObject returns the bucket and object of an XML API object write (PUT /<bucket>/<object>).
func xmlObject(r *http.Request) (string, string, bool) {
	if r.Method != http.MethodPut {
		return "", "", false
	}
	query := r.URL.Query()
	for _, key := range []string{"uploadType", "uploadId", "partNumber", "X-Goog-Algorithm"} {
		if query.Has(key) {
			return "", "", false // multipart parts and signed URLs: not handled here
		}
	}
	path := r.URL.EscapedPath()
	for _, prefix := range jsonAPIPrefixes {
		if strings.HasPrefix(path, prefix) {
			return "", "", false
		}
	}
	bucket, object, found := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	if !found || bucket == "" || object == "" {
		return "", "", false
	}
	bucket, errBucket := url.PathUnescape(bucket)
	object, errObject := url.PathUnescape(object)
	return bucket, object, errBucket == nil && errObject == nil
}

type xmlError struct {
	XMLName xml.Name `xml:"Error"`
	Code    string   `xml:"Code"`
	Message string   `xml:"Message"`
}

func fail(w http.ResponseWriter, status int, code, message string) {
	body, _ := xml.Marshal(xmlError{Code: code, Message: message})
	w.Header().Set("Content-Type", "application/xml; charset=UTF-8")
	w.WriteHeader(status)
	_, _ = w.Write(append([]byte(xml.Header), body...))
}

func (h *gcsExtensions) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.Path == "/batch/storage/v1" {
		if err := numberBatchParts(r); err != nil {
			http.Error(w, "invalid batch request: "+err.Error(), http.StatusBadRequest)
			return
		}
		h.next.ServeHTTP(w, r)
		return
	}
	if bucket, ok := xmlListAfter(r); ok {
		h.listAfter(w, r, bucket)
		return
	}
	bucket, object, ok := xmlObject(r)
	if !ok {
		h.next.ServeHTTP(w, r)
		return
	}
	if _, err := h.server.Backend().GetBucket(bucket); err != nil {
		fail(w, http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist.")
		return
	}
	contentType := r.Header.Get("Content-Type")
	var content []byte
	if source := r.Header.Get("x-goog-copy-source"); source != "" {
		decoded, err := url.PathUnescape(strings.TrimPrefix(source, "/"))
		sourceBucket, sourceObject, found := strings.Cut(decoded, "/")
		if err != nil || !found {
			fail(w, http.StatusBadRequest, "InvalidArgument", "x-goog-copy-source must be <bucket>/<object>")
			return
		}
		original, err := h.server.GetObject(sourceBucket, sourceObject)
		if err != nil {
			fail(w, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.")
			return
		}
		content, contentType = original.Content, original.ContentType
	} else {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			fail(w, http.StatusBadRequest, "IncompleteBody", err.Error())
			return
		}
		content = body
	}
	metadata := map[string]string{}
	for name, values := range r.Header {
		if key, found := strings.CutPrefix(strings.ToLower(name), "x-goog-meta-"); found && len(values) > 0 {
			metadata[key] = values[0]
		}
	}

	h.lock.Lock()
	defer h.lock.Unlock()
	if condition := r.Header.Get("x-goog-if-generation-match"); condition != "" {
		want, err := strconv.ParseInt(condition, 10, 64)
		if err != nil {
			fail(w, http.StatusBadRequest, "InvalidArgument", "x-goog-if-generation-match must be an integer")
			return
		}
		current := int64(0)
		if existing, err := h.server.GetObject(bucket, object); err == nil {
			current = existing.Generation
		}
		if current != want {
			fail(w, http.StatusPreconditionFailed, "PreconditionFailed",
				"At least one of the pre-conditions you specified did not hold.")
			return
		}
	}
	written := fakestorage.Object{
		ObjectAttrs: fakestorage.ObjectAttrs{BucketName: bucket, Name: object, ContentType: contentType, Metadata: metadata},
		Content:     content,
	}
	if err := h.server.CreateObjectStreaming(written.StreamingObject()); err != nil {
		fail(w, http.StatusInternalServerError, "InternalError", err.Error())
		return
	}
	stored, err := h.server.GetObject(bucket, object)
	if err != nil {
		fail(w, http.StatusInternalServerError, "InternalError", err.Error())
		return
	}
	w.Header().Set("ETag", strconv.Quote(stored.Etag))
	w.Header().Set("x-goog-generation", strconv.FormatInt(stored.Generation, 10))
	w.Header().Set("x-goog-hash", fmt.Sprintf("crc32c=%s,md5=%s", stored.Crc32c, stored.Md5Hash))
	w.WriteHeader(http.StatusOK)
}

// xmlListAfter returns the bucket of an XML API listing with start-after (GET /<bucket>?start-after=...).
func xmlListAfter(r *http.Request) (string, bool) {
	if r.Method != http.MethodGet || !r.URL.Query().Has("start-after") {
		return "", false
	}
	path := strings.Trim(r.URL.EscapedPath(), "/")
	if path == "" || strings.Contains(path, "/") {
		return "", false
	}
	bucket, err := url.PathUnescape(path)
	return bucket, err == nil
}

// listAfter answers a listing of the keys after start-after (exclusive), in one page.
func (h *gcsExtensions) listAfter(w http.ResponseWriter, r *http.Request, bucket string) {
	query := r.URL.Query()
	after := query.Get("start-after")
	options := fakestorage.ListOptions{Prefix: query.Get("prefix"), Delimiter: query.Get("delimiter"), StartOffset: after}
	listed, err := h.server.ListObjectsWithOptionsPaginated(bucket, options)
	if err != nil {
		fail(w, http.StatusNotFound, "NoSuchBucket", "The specified bucket does not exist.")
		return
	}
	result := fakestorage.ListBucketResult{Name: bucket, Delimiter: options.Delimiter, Prefix: options.Prefix}
	for _, prefix := range listed.Prefixes {
		if prefix > after {
			result.CommonPrefixes = append(result.CommonPrefixes, fakestorage.CommonPrefix{Prefix: prefix})
		}
	}
	for _, object := range listed.Objects {
		if object.Name == after {
			continue // GCS's StartOffset includes it; start-after does not
		}
		result.Contents = append(result.Contents, fakestorage.Contents{
			Key:          object.Name,
			Generation:   object.Generation,
			Size:         object.Size,
			LastModified: object.Updated.Format(time.RFC3339),
			ETag:         fakestorage.ETag{Value: object.Etag},
		})
	}
	result.KeyCount = len(result.Contents)
	body, err := xml.Marshal(result)
	if err != nil {
		fail(w, http.StatusInternalServerError, "InternalError", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/xml; charset=UTF-8")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(append([]byte(xml.Header), body...))
}

// numberBatchParts gives each part of a batch request that has none a Content-ID (<item-N>), in place.
func numberBatchParts(r *http.Request) error {
	// Not r.MultipartReader(): the emulator calls it next, and a request allows one call.
	_, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || params["boundary"] == "" {
		return fmt.Errorf("Content-Type must be multipart with a boundary")
	}
	reader := multipart.NewReader(r.Body, params["boundary"])
	var body bytes.Buffer
	writer := multipart.NewWriter(&body)
	for n := 1; ; n++ {
		part, err := reader.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		header := part.Header
		if header.Get("Content-ID") == "" {
			header.Set("Content-ID", fmt.Sprintf("<item-%d>", n))
		}
		copied, err := writer.CreatePart(header)
		if err != nil {
			return err
		}
		if _, err := io.Copy(copied, part); err != nil {
			return err
		}
	}
	if err := writer.Close(); err != nil {
		return err
	}
	r.Header.Set("Content-Type", "multipart/mixed; boundary="+writer.Boundary())
	r.Body = io.NopCloser(&body)
	r.ContentLength = int64(body.Len())
	return nil
}
