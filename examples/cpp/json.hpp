// A small JSON reader and writer for the C++ example: enough for model_card.json (written
// by the toolkit) and for the --json detections file. Numbers are doubles; strings keep
// their escapes decoded for \" \\ \/ \b \f \n \r \t (\uXXXX is kept as-is: card names are
// only counted, never printed). No dependencies, so every C++ app can take it as is.
#pragma once

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace retinaunet {

struct Json {
    enum class Type { Null, Bool, Number, String, Array, Object } type = Type::Null;
    bool boolean = false;
    double number = 0;
    std::string text;
    std::vector<Json> items;                 // Array
    std::map<std::string, Json> members;     // Object

    bool has(const std::string& key) const {
        return type == Type::Object && members.count(key) && members.at(key).type != Type::Null;
    }
    // The member `key` of an object; `where` names the file and path for the error.
    const Json& at(const std::string& key, const std::string& where) const {
        if (type != Type::Object || !members.count(key))
            throw std::runtime_error(where + " has no \"" + key + "\"");
        return members.at(key);
    }
    double as_number(const std::string& where) const {
        if (type != Type::Number) throw std::runtime_error(where + " is not a number");
        return number;
    }
    const std::vector<Json>& as_array(const std::string& where) const {
        if (type != Type::Array) throw std::runtime_error(where + " is not a list");
        return items;
    }
    const std::string& as_string(const std::string& where) const {
        if (type != Type::String) throw std::runtime_error(where + " is not a string");
        return text;
    }
};

class JsonParser {
public:
    JsonParser(const std::string& text, const std::string& source) : s_(text), source_(source) {}

    Json parse() {
        Json value = parse_value(0);
        skip();
        if (i_ != s_.size()) fail("trailing characters");
        return value;
    }

private:
    const std::string& s_;
    std::string source_;
    size_t i_ = 0;

    [[noreturn]] void fail(const std::string& what) const {
        throw std::runtime_error(source_ + ": not valid JSON (" + what + " at byte " +
                                 std::to_string(i_) + ")");
    }
    void skip() {
        while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
    }
    void expect(char c) {
        skip();
        if (i_ >= s_.size() || s_[i_] != c) fail(std::string("expected '") + c + "'");
        ++i_;
    }
    bool literal(const char* word) {
        const std::string w(word);
        if (s_.compare(i_, w.size(), w) != 0) return false;
        i_ += w.size();
        return true;
    }
    std::string parse_string() {
        expect('"');
        std::string out;
        while (i_ < s_.size() && s_[i_] != '"') {
            char c = s_[i_++];
            if (c == '\\') {
                if (i_ >= s_.size()) fail("unterminated string");
                const char e = s_[i_++];
                switch (e) {
                    case 'n': c = '\n'; break;
                    case 't': c = '\t'; break;
                    case 'r': c = '\r'; break;
                    case 'b': c = '\b'; break;
                    case 'f': c = '\f'; break;
                    case 'u': out += "\\u"; continue;
                    default: c = e;
                }
            }
            out += c;
        }
        if (i_ >= s_.size()) fail("unterminated string");
        ++i_;
        return out;
    }
    Json parse_value(int depth) {
        if (depth > 64) fail("nesting too deep");
        skip();
        if (i_ >= s_.size()) fail("unexpected end");
        Json value;
        const char c = s_[i_];
        if (c == '{') {
            value.type = Json::Type::Object;
            ++i_;
            skip();
            if (i_ < s_.size() && s_[i_] == '}') { ++i_; return value; }
            while (true) {
                skip();
                const std::string key = parse_string();
                expect(':');
                value.members[key] = parse_value(depth + 1);
                skip();
                if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
                expect('}');
                return value;
            }
        }
        if (c == '[') {
            value.type = Json::Type::Array;
            ++i_;
            skip();
            if (i_ < s_.size() && s_[i_] == ']') { ++i_; return value; }
            while (true) {
                value.items.push_back(parse_value(depth + 1));
                skip();
                if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
                expect(']');
                return value;
            }
        }
        if (c == '"') {
            value.type = Json::Type::String;
            value.text = parse_string();
            return value;
        }
        if (literal("true")) { value.type = Json::Type::Bool; value.boolean = true; return value; }
        if (literal("false")) { value.type = Json::Type::Bool; return value; }
        if (literal("null")) return value;
        // A number (NaN and Infinity, which Python's json writes, are refused like the
        // toolkit's strict reader does).
        const char* start = s_.c_str() + i_;
        char* end = nullptr;
        value.number = std::strtod(start, &end);
        if (end == start || !(c == '-' || std::isdigit(static_cast<unsigned char>(c))))
            fail("unexpected character");
        value.type = Json::Type::Number;
        i_ += static_cast<size_t>(end - start);
        return value;
    }
};

inline Json parse_json(const std::string& text, const std::string& source) {
    return JsonParser(text, source).parse();
}

// A float as JSON: the shortest decimal that reads back to the same float32.
inline std::string json_float(float value) {
    char buffer[32];
    for (int digits = 6; digits <= 9; ++digits) {
        std::snprintf(buffer, sizeof buffer, "%.*g", digits, static_cast<double>(value));
        if (std::strtof(buffer, nullptr) == value) break;
    }
    return buffer;
}

}  // namespace retinaunet
