"""Shared by the PROTOBUF schema tests: descriptor helpers and schemas that exercise the printer."""

from __future__ import annotations

import base64

from google.protobuf import descriptor_pb2 as dpb

from registry.protobuf import ProtobufSchema


def b64(fdp: dpb.FileDescriptorProto) -> str:
    return base64.standard_b64encode(fdp.SerializeToString()).decode()


def descriptor(schema: ProtobufSchema) -> dpb.FileDescriptorProto:
    return dpb.FileDescriptorProto.FromString(base64.b64decode(schema.formatted("serialized")))


ROUND_TRIP = {
    "proto3": """
        syntax = "proto3";
        package shop.v1;
        import "google/protobuf/timestamp.proto";
        option java_package = "com.shop.v1";
        option java_multiple_files = true;
        option go_package = "example.com/shop/v1;shopv1";
        option optimize_for = SPEED;
        message Item {
          message Price { int64 units = 1; string currency = 2; }
          enum Kind { KIND_UNSPECIFIED = 0; BOOK = 1; FOOD = 2 [deprecated = true]; }
          map<string, Price> prices = 1;
          string sku = 2 [json_name = "SKU"];
          optional int32 stock = 3;
          Kind kind = 4;
          oneof choice { string text = 5; bytes blob = 6; Price alt = 7; }
          repeated int64 tags = 8 [packed = false];
          google.protobuf.Timestamp created = 9;
          map<int32, Kind> kinds = 10;
          reserved 20, 22 to 25, 100 to max;
          reserved "old", "older";
        }
        enum Status {
          option allow_alias = true;
          STATUS_UNKNOWN = 0; STATUS_OK = 1; STATUS_FINE = 1;
          reserved 5 to 7, 10 to max;
          reserved "GONE";
        }
        service Shop {
          rpc Get (Item) returns (Item);
          rpc Watch (stream Item) returns (stream Item) { option deprecated = true; }
        }
    """,
    "proto2": r"""
        syntax = "proto2";
        package legacy;
        message Msg {
          required string id = 1;
          optional int32 count = 2 [default = -7];
          optional string label = 3 [default = "tab\there \"q\" é"];
          optional bytes raw = 4 [default = "\000\001\377"];
          optional double ratio = 5 [default = inf];
          optional float f = 6 [default = -1.5e-3];
          optional Color color = 7 [default = GREEN];
          repeated group Line = 8 { required int32 no = 1; optional string text = 2; }
          optional bool flag = 9 [default = true];
          extensions 100 to 199;
          extend Msg { optional int32 nested_ext = 150; }
        }
        enum Color { RED = 1; GREEN = 2; }
        extend Msg { optional string note = 100; repeated int64 nums = 101; }
    """,
    "editions": """
        edition = "2023";
        package ed;
        option features.field_presence = IMPLICIT;
        message Rec {
          int32 a = 1;
          int32 b = 2 [features.field_presence = LEGACY_REQUIRED];
          Rec child = 3 [features.message_encoding = DELIMITED];
          reserved first, second;
          reserved 10;
        }
    """,
    "custom options": """
        syntax = "proto3";
        package opt;
        import "google/protobuf/descriptor.proto";
        message Meta { string doc = 1; repeated string tags = 2; }
        extend google.protobuf.FieldOptions { Meta meta = 50001; int32 level = 50002; }
        extend google.protobuf.MessageOptions { string table = 50003; }
        message Row {
          option (table) = "rows";
          string id = 1 [(meta) = { doc: "key" tags: "pii" tags: "id" }, (level) = 3];
          string note = 2 [(meta).doc = "free text", deprecated = true];
        }
    """,
    # Nested messages declared before map fields: printing must keep nested_type order
    # (map entries included), since Confluent's message indexes follow it.
    "nested order": """
        syntax = "proto3";
        message Outer {
          message A { int32 x = 1; }
          map<string, A> by_name = 1;
          message B { A a = 1; }
          map<string, B> by_key = 2;
          B b = 3;
        }
        message Second {}
    """,
    # Short names that would resolve to the wrong symbol must be qualified.
    "shadowing": """
        syntax = "proto3";
        package p;
        message Value { int32 v = 1; }
        message Holder {
          message Value { string s = 1; }
          p.Value outer = 1;
          Value inner = 2;
          int32 Thing = 3;
          .p.Thing thing = 4;
        }
        message Thing { int32 t = 1; }
    """,
    "no package": """
        syntax = "proto3";
        message A { B b = 1; message C { A a = 1; } }
        message B { A.C c = 1; }
    """,
}
