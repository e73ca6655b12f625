// Package product is the product model of productwatch: the fields a client
// may write, their validation, the strict JSON decoders for request bodies
// (full input and JSON merge patch) and the PostgreSQL store.
//
// Products are encoded to JSON in one place only, the SQL function
// product_json (see migrations/): the store returns those bytes as they are,
// so REST responses and change events always agree.
package product
